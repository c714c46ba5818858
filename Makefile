# MetaPortrait-Lightning: every Python target runs inside .venv, created by `make install`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.installed
# Re-install when any of these change; otherwise `make install` does nothing.
INSTALL_INPUTS := setup.cfg pyproject.toml Makefile

DATA_ROOT   ?= data
SAMPLE      ?= $(DATA_ROOT)/sample
ARGS        ?=
STAGE       ?=
# MediaPipe/TFLite chatter on stderr is noise for users.
export GLOG_minloglevel ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 3
PYTEST_ARGS ?=
# pytest-xdist: a worker per core (at most 4), each test module on one worker so that its fixtures are built once;
# tests/conftest.py gives each worker its share of the cores. `make test PYTEST_WORKERS=` runs in one process.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadscope

.PHONY: help install lint test app demo sample preprocess stage1 meta sr personalize upscale animate evaluate sweep train bench bench-gpu bench-personalize export stage1-evidence stage1-evidence-reps meta-evidence meta-ablation meta-evidence-reps clean distclean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(INSTALL_INPUTS)
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=70,<81" wheel
	# CPU torch first: anything else asking for torch must find it already satisfied.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# litdata's metadata asks for torchvision (which breaks beside CPU torch): no deps.
	$(PIP) install -q --no-deps litdata==0.2.76
	# opencv-python / -headless / -contrib share one cv2/ folder: contrib last wins.
	$(PIP) install -q --no-deps --force-reinstall opencv-contrib-python==4.11.0.86
	$(PY) -c "import torch, lightning, litdata, cv2, mediapipe, av, omegaconf; print('stack ok: torch', torch.__version__, 'lightning', lightning.__version__, 'cv2', cv2.__version__)"
	@touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned stack (idempotent)

lint: install ## ruff over the whole tree (pyproject.toml: 120 columns); part of make test
	$(PY) -m ruff check .

test: install lint ## lint, then run the test suite (what CI runs)
	@# pytest exits 5 when it collects no tests: a broken suite, so a failure here too
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

app: install ## the web app on http://127.0.0.1:7860 (animate, personalize): make app ARGS="--checkpoint CKPT"
	$(PY) -m src.app $(ARGS)

sample: install ## build the embedded sample dataset into $(SAMPLE) (once)
	$(PY) -m src.sample --output $(SAMPLE)

demo: install ## install, build the sample data and run the pipeline on it (outputs/demo/)
	$(PY) -m src.demo --sample $(SAMPLE) --output outputs/demo

stage1: install ## stage 1 (warp, then refine) in one resumable run: make stage1 ARGS="model=demo data.root=..."
	$(PY) -m src.train stage1 $(ARGS)

meta: install ## meta-learning from the latest stage-1 run (or ARGS="meta.init=CKPT"): make meta ARGS="..."
	$(PY) -m src.train meta $(ARGS)

sr: install ## temporal super-resolution: LQ renders by the latest stage-1/meta model, then training: make sr ARGS="..."
	$(PY) -m src.train sr $(ARGS)

upscale: install ## super-resolve a frame folder or video: make upscale CKPT=sr.ckpt INPUT=frames_or.mp4 OUTPUT=out_dir_or.mp4
	$(PY) -m src.upscale --checkpoint $(CKPT) --input $(INPUT) --output $(OUTPUT) $(ARGS)

export: install ## ONNX graphs of a checkpoint, checked against torch: make export CKPT=gen.ckpt OUT=onnx_dir [ARGS="--sr-checkpoint sr.ckpt"]
	@test -n "$(CKPT)" -a -n "$(OUT)" || { echo "usage: make export CKPT=generator.ckpt OUT=folder [ARGS=...]" >&2; exit 2; }
	$(PY) -m src.export --checkpoint $(CKPT) --output $(OUT) $(ARGS)

animate: install ## drive a portrait with a video: make animate SOURCE=face.jpg DRIVING=talk.mp4 CKPT=gen.ckpt [OUT=...] [ARGS="--sr-checkpoint sr.ckpt --paste-back"]
	@test -n "$(SOURCE)" -a -n "$(DRIVING)" -a -n "$(CKPT)" || { echo "usage: make animate SOURCE=image_or_video DRIVING=video.mp4 CKPT=generator.ckpt [OUT=out.mp4]" >&2; exit 2; }
	$(PY) -m src.animate --checkpoint $(CKPT) --source $(SOURCE) --driving $(DRIVING) --output $(or $(OUT),outputs/animations/$(basename $(notdir $(SOURCE)))_$(basename $(notdir $(DRIVING))).mp4) $(ARGS)

evaluate: install ## metrics + baselines on shards: make evaluate CKPT=gen.ckpt [DATA=shards] [ARGS="--mode cross-identity"]
	@test -n "$(CKPT)" || { echo "usage: make evaluate CKPT=generator.ckpt [DATA=preprocessed shards] [OUT=dir]" >&2; exit 2; }
	$(PY) -m src.evaluate --checkpoint $(CKPT) --data $(or $(DATA),$(DATA_ROOT)/sample_shards) --output $(or $(OUT),outputs/evaluation) $(ARGS)

personalize: install ## adapt to a person: make personalize VIDEO=me.mp4 CKPT=meta.ckpt [OUT=me.ckpt] [ARGS="--steps 300"]
	@test -n "$(VIDEO)" -a -n "$(CKPT)" || { echo "usage: make personalize VIDEO=path/to/video.mp4 CKPT=path/to/generator.ckpt [OUT=...]" >&2; exit 2; }
	$(PY) -m src.personalize --checkpoint $(CKPT) --video $(VIDEO) --output $(or $(OUT),outputs/personalized/$(basename $(notdir $(firstword $(VIDEO)))).ckpt) $(ARGS)

SWEEP ?= lightning_configs/sweeps/refine.yaml
sweep: install ## hyper-parameter sweep: make sweep SWEEP=lightning_configs/sweeps/meta.yaml [COUNT=10] [LOCAL=1] [ARGS="data.root=..."]
	$(PY) -m src.sweep $(SWEEP) --count $(or $(COUNT),10) $(if $(LOCAL),--local) -- $(ARGS)

train: install ## train one stage: make train STAGE=warp ARGS="key=value ..."
	$(PY) -m src.train $(STAGE) $(ARGS)

preprocess: install ## preprocess videos: make preprocess INPUT=/path/to/voxceleb2 OUTPUT=data/voxceleb2_shards
	$(PY) -m src.preprocess --input $(INPUT) --output $(OUTPUT) $(ARGS)

# The evidence runs of BENCHMARKS.md (trained by hand, see there): evaluated by `make bench` when present.
# OFFICIAL=path/to/MetaPortrait/base_model: bench_inference times the official generator beside ours (a checkout
# of github.com/Meta-Portrait/MetaPortrait, never part of this repository)
STAGE1_RUN ?= outputs/stage1/evidence
SR_RUN     ?= outputs/sr/evidence
EVIDENCE_SHARDS ?= outputs/bench/shards_fixtures
bench: install ## run every benchmark and rewrite the tables in BENCHMARKS.md (evidence runs evaluated when present)
	$(PY) -m benchmarks.bench_preprocess
	$(PY) -m benchmarks.bench_datamodules
	$(PY) -m benchmarks.bench_mesh_flow
	$(PY) -m benchmarks.bench_smoothing
	$(PY) -m benchmarks.bench_controls
	$(PY) -m benchmarks.bench_app
	$(PY) -m benchmarks.bench_paste
	$(PY) -m benchmarks.bench_stream
	$(PY) -m benchmarks.bench_inference $(if $(OFFICIAL),--official $(OFFICIAL))
	$(PY) -m benchmarks.bench_stage1
	$(PY) -m benchmarks.bench_personalize_speed
	$(PY) -m benchmarks.bench_sr
	@if [ -f $(STAGE1_RUN)/stages.json ]; then $(PY) -m benchmarks.eval_stage1 --run $(STAGE1_RUN) --shards $(EVIDENCE_SHARDS); \
	  $(PY) -m benchmarks.eval_metrics --checkpoint $(STAGE1_RUN)/refine/checkpoints/last.ckpt --data $(EVIDENCE_SHARDS); \
	else echo "skipped: stage-1 evidence ($(STAGE1_RUN) not found; BENCHMARKS.md says how to train it)"; fi
	@if [ -f $(SR_RUN)/checkpoints/last.ckpt ]; then $(PY) -m benchmarks.eval_sr --run $(SR_RUN) --weights ema; \
	else echo "skipped: SR evidence ($(SR_RUN) not found; BENCHMARKS.md says how to train it)"; fi
	@if [ -f $(META_CKPT) ] && [ -f $(STAGE1_CKPT) ]; then $(MAKE) --no-print-directory bench-personalize; \
	else echo "skipped: adaptation curves ($(META_CKPT) or $(STAGE1_CKPT) not found)"; fi
	$(PY) -m benchmarks.report

# EVIDENCE_REP names one repetition of an evidence run below: its run folders and tables end in _rep<N>, and it
# trains with seed 1233+N.
EVIDENCE_REP ?=
REP_TAG      := $(if $(EVIDENCE_REP),_rep$(EVIDENCE_REP))
REP_SEED     := $(if $(EVIDENCE_REP),seed=$(shell echo $$((1233 + $(EVIDENCE_REP)))))
EVIDENCE_COMMON := logger=disabled data.root=$(EVIDENCE_SHARDS) trainer.enable_progress_bar=false $(REP_SEED)

# The stage-1 evidence of BENCHMARKS.md: the demo preset trained on voxceleb2_mini's dev people (about 12 min on 2
# CPU cores), then the field's metrics on its test people beside both baselines (the `evaluation` table, or
# `evaluation_rep<N>` for EVIDENCE_REP=N). `make stage1-evidence-reps` trains and evaluates three repetitions.
stage1-evidence: install ## train and evaluate the stage-1 evidence model (demo preset, ~15 min on 2 CPU cores)
	@test -f $(EVIDENCE_SHARDS)/manifest.json || $(PY) -m benchmarks.bench_preprocess
	$(PY) -m src.train stage1 model=demo $(EVIDENCE_COMMON) stage1.warp_epochs=20 stage1.refine_epochs=20 \
	  trainer.log_every_n_steps=5 run_name=evidence$(REP_TAG)
	$(PY) -m benchmarks.eval_metrics --checkpoint outputs/stage1/evidence$(REP_TAG)/refine/checkpoints/last.ckpt \
	  --data $(EVIDENCE_SHARDS) --name evaluation$(REP_TAG)

stage1-evidence-reps: install ## three repetitions of the stage-1 evidence, training included (~45 min on 2 CPU cores)
	for rep in 1 2 3; do $(MAKE) --no-print-directory stage1-evidence EVIDENCE_REP=$$rep || exit 1; done
	$(PY) -m benchmarks.report

# The adaptation-curve evidence of BENCHMARKS.md: stage 1, meta and a control on voxceleb2_mini's dev split at
# the `tiny` scale (64 px, blend_warped), trained by `make meta-evidence`: META_CKPT is Reptile with learned
# per-tensor inner rates on tasks of META_SUPPORT support frames (40, chosen on the mesh prior on a proxy split; 16
# before 2026-12-06) for 220 outer steps, about the CPU time of the control's extra 140 refine epochs (stage 1
# trained on: a copy of its run folder continued to CONTROL_REFINE_EPOCHS, see BENCHMARKS.md). `make
# meta-evidence-reps` trains and benchmarks three repetitions. `make meta-ablation`: Reptile without learned rates.
# META_OUTER=refiner: the outer step moves the refiner only (meta.outer_update; runs and tables named ..._refiner).
META_SUPPORT := 40
META_OUTER   ?= generator
META_TAG     := $(if $(filter refiner,$(META_OUTER)),_refiner)
META_RUN     := evidence_tiny_lslr220_s$(META_SUPPORT)$(META_TAG)
META_CKPT    ?= outputs/meta/$(META_RUN)$(REP_TAG)/checkpoints/last.ckpt
STAGE1_CKPT  ?= outputs/stage1/evidence_tiny$(REP_TAG)/refine/checkpoints/last.ckpt
CONTROL_CKPT ?= outputs/stage1/evidence_tiny_control$(REP_TAG)/refine/checkpoints/last.ckpt
CONTROL_REFINE_EPOCHS ?= 240
EVIDENCE_ARGS := model=tiny model.refiner.blend_warped=true $(EVIDENCE_COMMON)
META_EVIDENCE_ARGS := $(EVIDENCE_ARGS) meta.init=$(STAGE1_CKPT) meta.algorithm=reptile meta.inner_steps=10 meta.inner_batch=4 \
  meta.support_frames=8 meta.query_from_other_clip=false meta.outer_optimizer=sgd meta.outer_lr_decay=linear optim.lr=0.5 \
  trainer.max_steps=240 trainer.max_epochs=100000 trainer.check_val_every_n_epoch=16
meta-evidence: install ## train the stage-1, meta (learned rates) and control runs that bench-personalize compares (tiny, ~35 min on 2 CPU cores)
	@test -f $(EVIDENCE_SHARDS)/manifest.json || $(PY) -m benchmarks.bench_preprocess
	$(PY) -m src.train stage1 $(EVIDENCE_ARGS) run_name=evidence_tiny$(REP_TAG) stage1.warp_epochs=20 stage1.refine_epochs=100 \
	  trainer.check_val_every_n_epoch=10
	$(PY) -m src.train meta $(META_EVIDENCE_ARGS) run_name=$(META_RUN)$(REP_TAG) meta.learn_inner_lr=true \
	  meta.inner_lr_lr=0.02 meta.support_frames=$(META_SUPPORT) meta.outer_update=$(META_OUTER) trainer.max_steps=220
	$(PY) -m src.train stage1 $(EVIDENCE_ARGS) run_name=evidence_tiny_control$(REP_TAG) stage1.warp_epochs=20 \
	  stage1.refine_epochs=$(CONTROL_REFINE_EPOCHS) trainer.check_val_every_n_epoch=10 \
	  stage1.continue_from=outputs/stage1/evidence_tiny$(REP_TAG)

meta-ablation: install ## Reptile without learned rates from the evidence's stage 1 (after meta-evidence)
	$(PY) -m src.train meta $(META_EVIDENCE_ARGS) run_name=evidence_tiny$(REP_TAG)

meta-evidence-reps: install ## three repetitions of the whole adaptation-curve evidence, training included (~2 h on 2 CPU cores)
	for rep in 1 2 3; do $(MAKE) --no-print-directory meta-evidence EVIDENCE_REP=$$rep && \
	  $(MAKE) --no-print-directory bench-personalize EVIDENCE_REP=$$rep ARGS="--name personalize_curves_s$(META_SUPPORT)$(META_TAG)_rep$$rep" || exit 1; done

bench-gpu: install ## the GPU path measured on one GPU (~8 min): training, loader, inference, personalization; rows into BENCHMARKS.md
	$(PY) -m benchmarks.bench_gpu $(ARGS)
	$(PY) -m benchmarks.report

bench-personalize: install ## adaptation curves from META_CKPT vs STAGE1_CKPT (and CONTROL_CKPT) on held-out people (JSON)
	$(PY) -m benchmarks.bench_personalize --meta $(META_CKPT) --stage1 $(STAGE1_CKPT) \
	  $(if $(wildcard $(CONTROL_CKPT)),--control $(CONTROL_CKPT)) --seeds 3 $(ARGS)
	$(PY) -m benchmarks.report

clean: ## remove outputs and caches (keeps .venv and data)
	rm -rf outputs .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## also remove .venv and generated data
	rm -rf $(VENV) $(DATA_ROOT)
