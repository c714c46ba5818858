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


# Horizontal flip: landmark i of a mirrored face is landmark FLIP_PERMUTATION[i] of the original.
# Derived by matching mirrored MediaPipe landmarks of five real frontal faces (Hungarian assignment);
# it is an involution that fixes the 28 midline points and swaps the known pairs (eye corners, mouth
# corners, irises). 1316 of the 1322 tessellation edges map onto edges: the other 6 are quad diagonals
# that the mesh itself triangulates asymmetrically.
FLIP_PERMUTATION = np.array([
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250, 251, 252, 253, 254, 255,
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276,
    277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297,
    298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318,
    319, 320, 321, 322, 323, 94, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338,
    339, 340, 341, 342, 343, 344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359,
    360, 361, 362, 363, 364, 365, 366, 367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151,
    152, 380, 381, 382, 383, 384, 385, 386, 387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397,
    398, 399, 175, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
    418, 195, 419, 197, 420, 199, 200, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434,
    435, 436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455,
    456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466, 467, 3, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
    82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106,
    107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127,
    128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148,
    149, 150, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170, 171, 172, 173,
    174, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 196,
    198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220,
    221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241,
    242, 243, 244, 245, 246, 247, 473, 476, 475, 474, 477, 468, 471, 470, 469, 472
], dtype=np.int64)
