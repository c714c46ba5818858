"""MediaPipe FaceMesh topology (478 points with refine_landmarks=True): triangles, ordered contours and
the index groups used for motion, masks and losses. Derived from the edge sets mediapipe ships."""
from __future__ import annotations

import functools
from collections import Counter, defaultdict

import numpy as np
from mediapipe.python.solutions import face_mesh_connections as fmc

NUM_LANDMARKS = 478  # 468 mesh points + 2 x 5 iris points
RIGHT_IRIS = list(range(468, 473))  # the subject's right eye (image left); 468 is its centre
LEFT_IRIS = list(range(473, 478))   # 473 is its centre

# Eyelids from the outer to the inner corner, upper[i] closes onto lower[i] in a blink.
RIGHT_EYE_UPPER = [246, 161, 160, 159, 158, 157, 173]
RIGHT_EYE_LOWER = [7, 163, 144, 145, 153, 154, 155]
LEFT_EYE_UPPER = [466, 388, 387, 386, 385, 384, 398]
LEFT_EYE_LOWER = [249, 390, 373, 374, 380, 381, 382]
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (263, 362)

# Inner lip contour as one closed loop (the mouth opening), and the lower lip.
LIPS_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
LOWER_LIP_INNER = [95, 88, 178, 87, 14, 317, 402, 318, 324]
LOWER_LIP_OUTER = [146, 91, 181, 84, 17, 314, 405, 321, 375]
MOUTH_CORNERS = (61, 291)
CHIN = 152
FOREHEAD = 10


def ordered_loop(edges: frozenset[tuple[int, int]]) -> list[int]:
    """The vertices of a closed contour given as an edge set, in walking order."""
    adj = defaultdict(list)
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    start = min(adj)
    loop, prev, cur = [start], None, start
    while True:
        nxt = next(n for n in adj[cur] if n != prev)
        if nxt == start:
            return loop
        loop.append(nxt)
        prev, cur = cur, nxt


@functools.lru_cache(maxsize=1)
def face_oval() -> list[int]:
    return ordered_loop(fmc.FACEMESH_FACE_OVAL)


@functools.lru_cache(maxsize=1)
def tessellation_triangles() -> np.ndarray:
    """(852, 3) triangles of the mesh. The tessellation ships as edges; its 3-cliques are the faces
    except two 'hollow' cliques whose three edges each border three cliques, which are dropped."""
    adj = defaultdict(set)
    for a, b in fmc.FACEMESH_TESSELATION:
        adj[a].add(b)
        adj[b].add(a)
    cliques = {tuple(sorted((a, b, c))) for a in adj for b in adj[a] for c in adj[a] & adj[b]}

    def edges(t):
        return ((t[0], t[1]), (t[0], t[2]), (t[1], t[2]))

    count = Counter(e for t in cliques for e in edges(t))
    faces = [t for t in sorted(cliques) if not all(count[e] == 3 for e in edges(t))]
    return np.asarray(faces, dtype=np.int32)
