# Sourced by the sbatch templates (needs RUN_DIR): sets the bash array RESUME_ARGS to resume a (re)started
# job.
#
# A job that SLURM requeued after SIGUSR1 finds Lightning's $RUN_DIR/hpc_ckpt_<n>.ckpt (Lightning would also
# pick it up by itself when no --ckpt_path is given); a job that died without warning (node failure, OOM,
# resubmission into the same RUN_DIR) has only ModelCheckpoint's last.ckpt. The newest of them wins, so a
# stale hpc checkpoint never hides a later last.ckpt. A fresh RUN_DIR gives an empty array: training
# starts at 0.
RESUME_ARGS=()
_newest_ckpt="$(find "$RUN_DIR" \( -name 'hpc_ckpt_*.ckpt' -o -name 'last.ckpt' \) -type f \
    -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)"
if [ -n "$_newest_ckpt" ]; then
    echo "resuming from $_newest_ckpt"
    RESUME_ARGS=(--ckpt_path="$_newest_ckpt")
else
    echo "no checkpoint in $RUN_DIR: starting from step 0"
fi
unset _newest_ckpt
