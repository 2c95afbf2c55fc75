"""Data-parallel training: only rank 0 writes by default, ranks="all" writes a run per rank."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from server_support import free_port

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import plugin_dir, read_frame_file
from beholder_plugin.trainer.ranks import process_rank, run_for_rank


@pytest.fixture
def no_rank_env(monkeypatch):
    """No rank variables from the environment the tests run in."""
    for name in ("RANK", "LOCAL_RANK", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_rank_comes_from_the_environment(no_rank_env):
    assert process_rank() is None
    no_rank_env.setenv("LOCAL_RANK", "3")
    assert process_rank() == 3
    no_rank_env.setenv("RANK", "5")  # the global rank wins over the local one
    assert process_rank() == 5
    no_rank_env.delenv("RANK")
    no_rank_env.delenv("LOCAL_RANK")
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    no_rank_env.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert process_rank() == 0
    no_rank_env.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert process_rank() == 2
    no_rank_env.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["b:1"]}, "task": {"type": "worker"}}))
    assert process_rank() == 0  # without a chief, worker 0 is the chief
    assert run_for_rank("logs", "zero", None) == "logs" and run_for_rank("logs", "zero", 1) is None
    assert run_for_rank("logs", "all", 2) == os.path.join("logs", "rank-2")
    with pytest.raises(ValueError, match="ranks must be one of 'zero', 'all'"):
        run_for_rank("logs", "first", 0)


def test_another_rank_writes_nothing_and_update_returns_at_once(no_rank_env, tmp_path):
    no_rank_env.setenv("RANK", "1")
    run = str(tmp_path / "run")
    beholder = Beholder(run, strict=True)
    assert not beholder.active and beholder.update(arrays=[np.ones(3)]) is False
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    with beholder.watch(model):
        assert not model._forward_hooks  # nothing hooked on a rank that does not write
    beholder.close()
    assert not os.path.exists(run)  # not even the run directory
    everyone = Beholder(run, strict=True, ranks="all")
    assert everyone.active and everyone.logdir == os.path.join(run, "rank-1")
    assert os.path.exists(plugin_dir(everyone.logdir))
    everyone.close()


DDP = textwrap.dedent(
    """
    import os, sys, time
    import torch, torch.distributed as dist
    from torch import nn
    from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = Beholder(sys.argv[1], ranks=sys.argv[2], strict=True, background=False)
    if b.active:
        write_config(b.logdir, {**DEFAULT_CONFIG, "values": "gradients", "mode": "current", "FPS": 30})
    b.watch(model)
    gen = torch.Generator().manual_seed(dist.get_rank())  # each rank its own batch
    for step in range(6):
        x, y = torch.randn(4, 1, 28, 28, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if sys.argv[3] == "hooked":  # the gradients gone before update(): hooks catch the next backward's
            opt.zero_grad(set_to_none=True)
        b.frame_due_now()  # every step is due: read from .grad; or, hooked, arm then write
        b.update()
    b.close()
    print(f"<rank {dist.get_rank()} {b.active} {b.frames_written}>", flush=True)
    dist.barrier()
    # gloo's teardown at interpreter exit sometimes aborts ("terminate called without an active
    # exception") when the other rank has already closed its connection: leave without it.
    os._exit(0)
    """
)


def _two_ranks(tmp_path, source: str, *args: str) -> str:
    """Run a script with torchrun in two gloo processes; its stdout (the run must succeed)."""
    script = tmp_path / "two_ranks.py"
    script.write_text(source)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", str(script), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def _torchrun(tmp_path, logdir: str, ranks: str, how: str) -> dict[int, tuple[bool, int]]:
    stdout = _two_ranks(tmp_path, DDP, logdir, ranks, how)
    found = {}
    for rank, active, frames in re.findall(r"<rank (\d) (True|False) (\d+)>", stdout):
        found[int(rank)] = (active == "True", int(frames))
    return found


def test_ddp_with_two_processes_only_rank_zero_writes(tmp_path):
    pytest.importorskip("torch")
    logdir = str(tmp_path / "logs")
    found = _torchrun(tmp_path, logdir, "zero", "hooked")
    assert found[0] == (True, 3) and found[1] == (False, 0)  # six steps: armed, written, armed, ...
    assert sorted(os.listdir(logdir)) == ["plugins"]
    frame = read_frame_file(logdir)
    assert [rec["name"] for rec in frame.sections][:2] == ["module.0.weight", "module.0.bias"]
    assert frame.sections[0]["layout"] == "kernel_oihw" and "missing" not in frame.sections[0]


@pytest.mark.parametrize("how", ["read", "hooked"])
def test_ddp_with_ranks_all_writes_a_run_per_rank_with_the_same_gradients(tmp_path, how):
    pytest.importorskip("torch")
    logdir = str(tmp_path / "logs")
    found = _torchrun(tmp_path, logdir, "all", how)
    frames = 6 if how == "read" else 3  # read from .grad at every update(); hooked: armed, then written
    assert found == {0: (True, frames), 1: (True, frames)}
    assert sorted(os.listdir(logdir)) == ["rank-0", "rank-1"]
    frames = [read_frame_file(os.path.join(logdir, f"rank-{r}")) for r in (0, 1)]
    # DDP averages the gradients across ranks: both replicas show the same values at the same step
    assert frames[0].header["step"] == frames[1].header["step"]
    np.testing.assert_array_equal(frames[0].values, frames[1].values)
    assert np.abs(frames[0].values).max() > 0


RANK_TRAINER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
    b = Beholder(sys.argv[1], ranks="all", strict=True)
    write_config(b.logdir, {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30})
    rng = np.random.default_rng(int(os.environ["RANK"]))
    w = rng.normal(size=(64, 32)).astype(np.float32)
    deadline = time.monotonic() + float(sys.argv[2])
    print("ready", flush=True)
    while time.monotonic() < deadline:
        w += 0.01
        b.update(arrays={"w": w})
        time.sleep(0.01)
    b.close()
    print("frames", b.frames_written, b.failures, flush=True)
    """
)


def test_killing_rank_zero_leaves_the_other_rank_writing(tmp_path, no_rank_env):
    """Each rank's Beholder is on its own: SIGKILL of rank 0 mid-run does not touch rank 1's frames."""
    logdir = str(tmp_path / "logs")
    procs = {}
    for rank, seconds in ((0, 60), (1, 6)):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}
        procs[rank] = subprocess.Popen([sys.executable, "-c", RANK_TRAINER, logdir, str(seconds)], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for proc in procs.values():
            assert proc.stdout.readline().strip() == "ready"
        runs = [os.path.join(logdir, f"rank-{r}") for r in (0, 1)]
        deadline = time.monotonic() + 60
        while any(read_frame_file(run) is None for run in runs) and time.monotonic() < deadline:
            time.sleep(0.05)  # both ranks are writing
        procs[0].kill()  # rank 0 dies mid-run, perhaps mid-write
        procs[0].wait(30)
        killed_at = read_frame_file(os.path.join(logdir, "rank-1")).header["frame_id"]
        out, err = procs[1].communicate(timeout=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert procs[1].returncode == 0, err[-3000:]
    _, frames, failures = out.split()
    assert int(failures) == 0 and int(frames) > killed_at  # rank 1 went on writing after rank 0 died
    assert read_frame_file(os.path.join(logdir, "rank-0")) is not None  # whatever rank 0 left is whole


FSDP = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
    from beholder_plugin.protocol.runfiles import read_frame_file
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    for layer in model:
        fully_shard(layer)
    b = Beholder(sys.argv[1], ranks="all", strict=True, background=False)
    write_config(b.logdir, {**DEFAULT_CONFIG, "values": "trainable_variables", "mode": "current", "FPS": 30})
    assert b.update(variables=model)
    rec = read_frame_file(b.logdir).sections[0]
    local = model[0].weight.to_local().detach().numpy()
    shown = read_frame_file(b.logdir).section_values(0)
    same = bool(np.array_equal(np.sort(shown.reshape(-1)), np.sort(local.reshape(-1))))
    print(f"<fsdp {dist.get_rank()} {rec['name']} {rec['shape']} {rec['layout']} {same}>", flush=True)
    dist.barrier()
    os._exit(0)
    """
)


def test_fsdp2_parameters_are_shown_as_each_ranks_own_shard(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    stdout = _two_ranks(tmp_path, FSDP, str(tmp_path / "logs"))
    found = sorted(re.findall(r"<fsdp (\d) (\S+) (\[.*?\]) (\S+) (True|False)>", stdout))
    # each rank holds 4 of the weight's 8 rows (Shard(0)) and shows exactly those, as a Linear weight
    assert found == [(r, "0.weight", "[4, 16]", "matrix_out_in", "True") for r in ("0", "1")]


FSDP_WATCH = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
    from beholder_plugin.protocol.runfiles import read_frame_file
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if dist.get_rank() == 0:
        write_config(sys.argv[1], {**DEFAULT_CONFIG, "values": "trainable_variables", "mode": "current"})
    b = Beholder(sys.argv[1], strict=True, background=False)  # ranks="zero": rank 0 alone writes
    pre_hooks = lambda: sum(len(m._forward_pre_hooks) for m in model.modules())  # FSDP2 has its own
    fsdp_hooks = pre_hooks()
    if b.active:
        b.watch(model)
    frames = 0
    for step in range(2):  # step 0's update() arms the hooks, step 1's forward feeds its frame
        opt.zero_grad()
        if step == 1:  # the weights step 1's forward sees, gathered whole here by the test itself
            whole = [p.full_tensor().detach().numpy() for p in (model[0].weight, model[2].weight)]
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        if b.active:
            frames += bool(b.update())
    if b.active:
        b.flush()
        frame = read_frame_file(sys.argv[1])
        recs = frame.sections
        same = [bool(np.array_equal(np.sort(frame.section_values(i).reshape(-1)), np.sort(w.reshape(-1))))
                for i, w in zip((0, 2), whole)]
        hooks = pre_hooks() - fsdp_hooks
        print(f"<watch {frames} {[r['name'] for r in recs]} {recs[0]['shape']} {recs[0]['layout']} "
              f"{same} {hooks} {frame.header['step']}>", flush=True)
    dist.barrier()
    os._exit(0)
    """
)


def test_fsdp2_weights_under_watch_are_shown_whole_without_a_collective_of_our_own(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    stdout = _two_ranks(tmp_path, FSDP_WATCH, str(tmp_path / "logs"))
    found = re.findall(r"<watch (\d+) (\[.*?\]) (\[.*?\]) (\S+) (\[.*?\]) (\d+) (\d+)>", stdout)
    # Only rank 0 writes. Its frame (armed at step 0, taken at step 1) shows every parameter at its full
    # shape, the first weight's 8 x 16 values as the Linear (out, in) it is: gathered by FSDP2's own
    # forward, not one rank's 4 x 16 shard. The hooks are gone once the frame is taken. It is stamped
    # step 1, the optimizer steps its weights have seen (it said 2, the update() that wrote it).
    assert found == [("1", "['0.weight', '0.bias', '2.weight', '2.bias']", "[8, 16]", "matrix_out_in",
                      "[True, True]", "0", "1")], stdout[-2000:]



FSDP_GRADIENTS = textwrap.dedent(
    """
    import os, sys
    os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = sys.argv[2]
    import numpy as np
    import torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
    from beholder_plugin.protocol.runfiles import read_frame_file
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = Beholder(sys.argv[1], ranks="all", strict=True, background=False)
    write_config(b.logdir, {**DEFAULT_CONFIG, "values": "gradients", "mode": "current", "FPS": 30})
    b.watch(model)
    gen = torch.Generator().manual_seed(dist.get_rank())
    for step in range(4):
        opt.zero_grad()
        model(torch.randn(4, 6, generator=gen)).sum().backward()
        shards = {name: p.grad.to_local().detach().numpy().copy() for name, p in model.named_parameters()}
        opt.step()
        if sys.argv[3] == "hooked":  # gone before update(): the hooks catch the next backward's
            opt.zero_grad(set_to_none=True)
        b.frame_due_now()
        b.update()
    frame = read_frame_file(b.logdir)
    same = [bool(np.array_equal(np.sort(frame.section_values(i).ravel()), np.sort(shards[r["name"]].ravel())))
            and r["shape"] == list(shards[r["name"]].shape) for i, r in enumerate(frame.sections)]
    print(f"<rank {dist.get_rank()} {b.frames_written} {b.failures} {len(same)} {all(same)}>", flush=True)
    dist.barrier()
    os._exit(0)
    """
)


@pytest.mark.parametrize("how", ["read", "hooked"])
@pytest.mark.parametrize("batched", ["0", "1"], ids=["host", "device-path"])
def test_fsdp2_gradients_under_watch_are_each_ranks_own_shard(tmp_path, batched, how):
    """FSDP2's gradients are DTensors: each rank shows its own shard (to_local(), no collective), read from
    .grad or caught by the hooks. Before, the hooks copied the DTensor itself: on the host path the
    process died of a segmentation fault inside backward(), on the device path every section failed
    ("as_strided not supported with DTensor"), and strict=True raised that into backward()."""
    pytest.importorskip("torch.distributed.fsdp")
    stdout = _two_ranks(tmp_path, FSDP_GRADIENTS, str(tmp_path / "logs"), batched, how)
    found = sorted(re.findall(r"<rank (\d) (\d+) (\d+) (\d+) (True|False)>", stdout))
    # (sharded gradients are always caught by the hooks: a due update() arms, the next takes the frame)
    assert found == [("0", "2", "0", "4", "True"), ("1", "2", "0", "4", "True")], stdout[-2000:]


DDP_UNUSED_HERE = textwrap.dedent(
    """
    import os, sys
    os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = sys.argv[2]
    import numpy as np
    import torch, torch.distributed as dist
    from torch import nn
    from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
    from beholder_plugin.protocol.runfiles import read_frame_file
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.extra = nn.Linear(6, 3), nn.Linear(3, 2)

        def forward(self, x):  # "extra" is used on rank 1 only
            y = self.body(x)
            return y + self.extra(y).sum() if rank == 1 else y

    model = nn.parallel.DistributedDataParallel(Net(), find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    b = Beholder(sys.argv[1], ranks="all", strict=True, background=False)
    write_config(b.logdir, {**DEFAULT_CONFIG, "values": "gradients", "mode": "current", "FPS": 30})
    b.watch(model)
    gen = torch.Generator().manual_seed(rank)
    same = []
    for step in range(4):
        model(torch.randn(4, 6, generator=gen)).pow(2).mean().backward()
        truth = {name: p.grad.clone().numpy() for name, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)  # (gone before update(): the hooks catch the next backward's)
        b.frame_due_now()
        if b.update():
            frame = read_frame_file(b.logdir)
            same += [r["name"] for i, r in enumerate(frame.sections) if "missing" not in r and np.array_equal(
                np.sort(frame.section_values(i).ravel()), np.sort(truth[r["name"]].ravel()))]
    print(f"<rank {rank} {b.frames_written} {sorted(set(same))} {len(same)}>", flush=True)
    dist.barrier()
    os._exit(0)
    """
)


@pytest.mark.parametrize("batched", ["0", "1"], ids=["host", "device-path"])
def test_ddp_gradients_of_parameters_unused_on_one_rank_are_shown_averaged_there_too(tmp_path, batched):
    """DDP(find_unused_parameters=True) with a layer only rank 1 uses: rank 0 gets its averaged gradient
    from DDP, with no hook run for it; the hooks' frames show it on both ranks, as .grad holds it.
    Before, rank 0 said "no gradient this step" for it while its optimizer stepped with it."""
    stdout = _two_ranks(tmp_path, DDP_UNUSED_HERE, str(tmp_path / "logs"), batched)
    found = sorted(re.findall(r"<rank (\d) (\d+) (\[.*?\]) (\d+)>", stdout))
    names = "['module.body.bias', 'module.body.weight', 'module.extra.bias', 'module.extra.weight']"
    assert found == [("0", "2", names, "8"), ("1", "2", names, "8")], stdout[-2000:]
