# Site file for CPU clusters and the local test cluster (tools/slurm/slurm_local.sh).
# Sourced from the repository root by every prime_mcore job before `srun` (slurm/*.sbatch,
# the rendered run scripts and submitit jobs); choose another with cluster.site=<name>.
# POSIX sh: submitit's local executor sources it with /bin/sh.

# One thread per CPU of the task: ranks share the node's cores (no oversubscription).
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export MKL_NUM_THREADS=$OMP_NUM_THREADS

# torch.distributed uses gloo without GPUs (parallel.backend=auto). On nodes with several
# network interfaces, name the one the nodes reach each other on:
# export GLOO_SOCKET_IFNAME=eth0

# The project's virtual environment (`make install`), unless one is active already.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "${PRIME_MCORE_ROOT:-.}/.venv/bin/activate" ]; then
  # shellcheck source=/dev/null
  . "${PRIME_MCORE_ROOT:-.}/.venv/bin/activate"
fi
