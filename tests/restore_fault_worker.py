"""One process of the 2-process restore test (tests/test_pod.py::test_restore_decision...).

    python tests/restore_fault_worker.py PROCESS_ID PORT ROOT

Saves steps 1 and 2 of a small replicated state (both processes together), then runs
`restore_latest` in three workdirs with a read fault injected into `_read`:

- ``transient``: process 1 fails its first read of step 2 -> everyone restores step 2.
- ``persistent``: process 1 can never read step 2 (process 0 can) -> everyone raises
  CheckpointError and nothing is moved.
- ``chief``: process 0 can never read step 2 -> everyone restores step 1, step 2 is
  moved aside (by process 0).

Prints one ``RESULT <case> <outcome> <w>`` line per case.
"""

import os
import sys

pid, port, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

import jax  # noqa: E402

from subprocess_runs import TEST_HEARTBEAT_TIMEOUT_S  # noqa: E402  (tests/ is sys.path[0])

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           heartbeat_timeout_seconds=TEST_HEARTBEAT_TIMEOUT_S)

import numpy as np  # noqa: E402

from dmformer_jax.errors import CheckpointError  # noqa: E402
from dmformer_jax import checkpoint as ckpt  # noqa: E402
from dmformer_jax.train import mesh as mesh_lib  # noqa: E402

mesh = mesh_lib.make_mesh()
rep = mesh_lib.replicated(mesh)
abstract = {"w": jax.ShapeDtypeStruct((8,), np.float32, sharding=rep)}
MODEL = {"name": "fault_test"}


def state_of(step):
    return {"w": jax.device_put(np.full((8,), float(step), np.float32), rep)}


real_read = ckpt.training._read
CASES = {"transient": (1, 1), "persistent": (1, 100), "chief": (0, 100)}  # (faulty process, failures)

for case, (faulty, failures) in CASES.items():
    workdir = os.path.join(root, case)
    mngr = ckpt.make_manager(workdir, async_checkpointing=False, max_to_keep=5)
    for step in (1, 2):
        ckpt.save(mngr, step, state_of(step), {"step": step, "model": MODEL}, force=True)
    mngr.wait_until_finished()
    mngr.close()
    left = {"n": failures}

    def faulty_read(mngr, step, abstract_state, model, _left=left, _faulty=faulty):
        if jax.process_index() == _faulty and step == 2 and _left["n"] > 0:
            _left["n"] -= 1
            return None, "injected read error"
        return real_read(mngr, step, abstract_state, model)

    ckpt.training._read = faulty_read
    try:
        state, meta, step = ckpt.restore_latest(workdir, abstract, architecture=MODEL, log=lambda m: None,
                                                read_attempts=3, retry_delay_s=0.01)
        w = float(np.asarray(state["w"].addressable_data(0))[0])
        outcome = f"step={step}"
    except CheckpointError as e:
        outcome, w = "CheckpointError", float("nan")
        print(f"MESSAGE {case} {e}", flush=True)
    ckpt.training._read = real_read
    print(f"RESULT {case} {outcome} {w}", flush=True)

jax.distributed.shutdown()
