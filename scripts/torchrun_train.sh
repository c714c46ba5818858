#!/bin/bash
# Multi-node DDP training of one stage with torchrun (no scheduler). Run the same command on every node:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 scripts/torchrun_train.sh meta data.root=/data/vox2_shards
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 GPUS=8 scripts/torchrun_train.sh meta data.root=/data/vox2_shards
#
# torchrun starts GPUS processes per node and sets RANK/WORLD_SIZE; Lightning picks them up
# (TorchElasticEnvironment). --nnodes and --nproc-per-node must match trainer.num_nodes and
# trainer.devices, which this script passes for you. Re-running after a failure resumes every stage.
set -euo pipefail
STAGE=${1:?usage: NNODES=N NODE_RANK=I MASTER_ADDR=HOST [GPUS=8] scripts/torchrun_train.sh STAGE [key=value ...]}
shift
NNODES=${NNODES:-1} NODE_RANK=${NODE_RANK:-0} GPUS=${GPUS:-8}
exec .venv/bin/torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$GPUS" \
    --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}" \
    -m src.train "$STAGE" trainer=ddp trainer.num_nodes="$NNODES" trainer.devices="$GPUS" "$@"
