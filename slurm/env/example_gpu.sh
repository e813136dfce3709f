# Example site file for a GPU cluster: copy it to slurm/env/<site>.sh, adapt, and select it
# with cluster.site=<site>. Sourced from the repository root by every prime_mcore job
# before `srun` (slurm/*.sbatch, the rendered run scripts and submitit jobs).
# POSIX sh: submitit's local executor sources it with /bin/sh.

# Software stack (names differ per site):
# module purge
# module load gcc/12 cuda/12.4 nccl/2.21
# source /path/to/prime_mcore/.venv/bin/activate

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}

# NCCL: report problems, fail fast instead of hanging on a lost peer.
export NCCL_DEBUG=WARN
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# InfiniBand / RoCE: enable it and name the HCAs and the bootstrap interface.
export NCCL_IB_DISABLE=0
# export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3
# export NCCL_SOCKET_IFNAME=ib0
# export NCCL_NET_GDR_LEVEL=PHB

# Megatron-Core: tensor-parallel communication overlap needs ordered kernel launches.
export CUDA_DEVICE_MAX_CONNECTIONS=1
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
