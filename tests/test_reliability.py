"""Reliability of the `selprune` command as a user meets it: a separate process on the tiny Llama.

* a fuzz table of bad inputs and damaged run folders: each ends with its exit status (errors.py), exactly one
  line on stderr that starts "selprune: error:" and names the problem, no traceback, and no file written or
  changed (a damaged run folder is refused, never repaired);
* two processes on one run folder: the second refuses at once ("in use"), the first is not disturbed;
* kill -9 at random moments: --resume (or a fresh start, if nothing was committed) ends with the same
  metrics.csv and pruned.json, byte for byte, as an uninterrupted run.

Every command runs with HF_HUB_OFFLINE=1 (no network), one compute thread (the same in every run, so that
runs compare byte for byte; two cases run side by side), and an address-space limit, so that a setting
that asks for too much memory fails with exit 3 instead of taking the shared machine's memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import conftest
import pytest

from selprune.pruning import PrunedRecord

pytestmark = pytest.mark.slow  # minutes of separate processes: `pytest -m "not slow"` skips them locally
MEMORY_LIMIT = 8 << 30  # bytes of address space per command
TIMEOUT = 600  # seconds per command
REFUSAL_TIMEOUT = 120  # a refusal that takes longer is waiting for the folder's lock
WORKERS = 2  # fuzz cases run side by side
STEPS = conftest.TINY_RUN["steps"]
CONCURRENT_STEPS = 6  # a longer run, held for several seconds
KILL_SEEDS = tuple(range(STEPS + 1))  # one per phase of the run until its last commit (see phase_began)
LOCK = ".lock"


# -- running the command ---------------------------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f} s\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def command_env(cache: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", SELPRUNE_CACHE=str(cache),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONWARNINGS", None)
    return env


def start(argv: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """`python -m selprune.cli ARGV` in cwd, its memory limited (prlimit: no preexec_fn under threads)."""
    proc = subprocess.Popen([sys.executable, "-m", "selprune.cli", *map(str, argv)], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ProcessLookupError, PermissionError, ValueError):
        pass  # already gone, or a limit that cannot be lowered: the run itself still answers
    return proc


def finish(proc: subprocess.Popen, t0: float, timeout: float = TIMEOUT) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[test: killed after {timeout} s]"
    return Result(proc.returncode, out, err, time.perf_counter() - t0)


def selprune(argv: list[str], cwd: Path, env: dict, timeout: float = TIMEOUT) -> Result:
    t0 = time.perf_counter()
    return finish(start(argv, cwd, env), t0, timeout)


WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")  # warnings.warn's line: FILE:LINE: CATEGORY: message
PROGRESS = re.compile(r"\d+%\||\d+it/s|\d+/\d+ \[\d")  # tqdm


def error_lines(stderr: str) -> list[str]:
    """stderr's lines, less Python warnings (with the source line shown under them) and progress bars."""
    lines, after_warning = [], False
    for raw in stderr.replace("\r", "\n").splitlines():
        if not raw.strip():
            continue
        if WARNING.match(raw) or PROGRESS.search(raw):
            after_warning = bool(WARNING.match(raw))
            continue
        if after_warning and raw.startswith((" ", "\t")):
            continue  # the `warnings.warn(...)` source line under a warning
        after_warning = False
        lines.append(raw)
    return lines


def snapshot(root: Path) -> dict[str, str]:
    """Every file below root (the lock file aside, which a refusing process may write its pid into), by hash."""
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            found[rel + "/"] = "folder"
        elif path.name != LOCK:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "special"
    return found


def without_empty_folders(files: dict[str, str]) -> dict[str, str]:
    """A refused run may leave its (empty, or lock-only) output folder: that is not a file written."""
    return {k: v for k, v in files.items()
            if v != "folder" or any(other.startswith(k) and other != k for other in files)}


def holds(folder: Path, pid: int) -> bool:
    try:
        return (folder / LOCK).read_text().strip() == str(pid)
    except OSError:
        return False


def tiny_flags(model, data: Path, **overrides) -> list[str]:
    """conftest.TINY_RUN, with the tiny Llama and datasets, as command-line flags."""
    settings = dict(conftest.TINY_RUN, model=str(model), forget=str(data / "forget"), retain=str(data / "retain"),
                    **overrides)
    argv = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        argv += ([name] if value else ["--no-" + key.replace("_", "-")]) if isinstance(value, bool) else [name, value]
    return [str(a) for a in argv]


def assert_same_results(run: Path, reference: Path, note: str = "") -> None:
    for name in ("metrics.csv", "pruned.json"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs {note}"


# -- the shared runs -------------------------------------------------------------------------------------


@dataclass
class Finished:
    path: Path  # a finished tiny run: copy it, never change it
    seconds: float  # how long its command took, start to exit
    phases: list[float]  # how long each phase took: lock held -> step 0 committed -> ... -> step S -> exit
    flags: list[str]  # the tiny run's flags (model, datasets, settings), no --output
    env: dict
    root: Path


@pytest.fixture(scope="module")
def finished(tiny_llama, tiny_data, tmp_path_factory) -> Finished:
    root = tmp_path_factory.mktemp("reliability")
    return run_to_the_end(tiny_flags(tiny_llama, tiny_data), root / "finished", command_env(root / "cache"), root)


def run_to_the_end(flags: list[str], path: Path, env: dict, root: Path) -> Finished:
    """`run FLAGS -o PATH`, uninterrupted, with the time each of its phases took (see phase_began)."""
    t0 = time.perf_counter()
    proc = start(["run", *flags, "--quiet", "--output", path], root, env)
    events = {}  # phase -> when it began (see phase_began)
    while proc.poll() is None:
        for phase in range(STEPS + 2):
            if phase not in events and phase_began(path, proc.pid, phase):
                events[phase] = time.perf_counter()
        time.sleep(0.01)
    result = finish(proc, t0)
    assert result.returncode == 0, str(result)
    for name in ("config.toml", "metrics.csv", "pruned.json", "state/progress.json"):
        assert (path / name).is_file(), name
    assert sorted(events) == list(range(STEPS + 2)), f"phases seen: {sorted(events)}"
    ends = [events[p] for p in range(1, STEPS + 2)] + [t0 + result.seconds]
    return Finished(path, result.seconds, [end - events[p] for p, end in enumerate(ends)], flags, env, root)


def completed_step(folder: Path) -> int:
    try:
        return json.loads((folder / "state" / "progress.json").read_text())["completed_step"]
    except (OSError, ValueError, KeyError):
        return -1


def phase_began(folder: Path, pid: int, phase: int) -> bool:
    """Phase 0 begins when the run holds its folder, phase k when it has committed step k - 1; the last phase
    (after step STEPS is committed) writes the report."""
    return holds(folder, pid) if phase == 0 else completed_step(folder) >= phase - 1


# -- the fuzz table ----------------------------------------------------------------------------------------


class Ctx:
    """One case's world: its own folder (the command's cwd), the tiny run's flags, a copy of the finished run."""

    def __init__(self, folder: Path, fin: Finished, tiny_llama: Path, tiny_data: Path):
        self.dir, self.fin, self.llama, self.data = folder, fin, tiny_llama, tiny_data
        self.flags = fin.flags
        self.out = folder / "out"  # a fresh run's folder
        self.run = folder / "run"  # a copy of the finished run, made on demand

    def copy(self, name: str = "run") -> Path:
        target = self.dir / name
        shutil.copytree(self.fin.path, target)
        (target / LOCK).unlink(missing_ok=True)
        return target

    def fresh(self, *extra) -> list[str]:
        """`run` of the tiny settings into a new folder, with extra flags (later flags win)."""
        return ["run", *self.flags, "--output", self.out, *extra]

    def resume(self, *extra) -> list[str]:
        return ["run", "--resume", "--output", self.run, *extra]

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def model_copy(self) -> Path:
        target = self.dir / "model"
        shutil.copytree(self.llama, target)
        return target


@dataclass
class Case:
    id: str
    make: object  # Ctx -> argv, damaging or preparing what the case needs
    status: int
    phrases: tuple[str, ...]  # each in the error line
    absent: tuple[str, ...] = ()  # none in the error line (advice that would be wrong here)
    xfail: str | None = None


CASES: list[Case] = []


def case(id: str, *phrases: str, status: int = 2, absent: tuple[str, ...] = (), xfail: str | None = None):
    def register(make):
        CASES.append(Case(id, make, status, phrases, absent, xfail))
        return make
    return register


def garbage(n: int = 3000, seed: int = 7) -> bytes:
    """Random bytes that are neither UTF-8 nor anything else: 0xff never appears in UTF-8."""
    return b"\xff\xfe" + random.Random(seed).randbytes(n)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_toml(path: Path, key: str, value: str) -> None:
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key} =")]
    path.write_text("\n".join([*lines, f"{key} = {value}"]) + "\n")


# damaged run folders: a copy of the finished run, damaged, then `run --resume -o COPY`

@case("resume-pruned-missing", "pruned.json", "not found")
def _(c):
    (c.copy() / "pruned.json").unlink()
    return c.resume()


@case("resume-pruned-of-another-shape", "pruned.json", "attn-head", "24 ff")
def _(c):
    other = PrunedRecord("attn-head", 2, 4)  # what a --group attn-head run of the tiny Llama records
    for step in range(1, STEPS + 1):
        other.steps.append({"step": step, "pruned": {"0": [step - 1]}})
    (c.copy() / "pruned.json").write_text(json.dumps(other.to_json()))
    return c.resume()


@case("resume-pruned-same-shape-other-units", "pruned.json", "differs from what step 3 committed")
def _(c):
    def shift(data):  # the same counts per step and layer, other units
        for entry in data["steps"]:
            entry["pruned"] = {layer: sorted((u + 12) % data["units_per_layer"] for u in units)
                               for layer, units in entry["pruned"].items()}
    edit_json(c.copy() / "pruned.json", shift)
    return c.resume()


@case("resume-pruned-garbage", "pruned.json", "malformed")
def _(c):
    (c.copy() / "pruned.json").write_bytes(garbage())
    return c.resume()


@case("resume-pruned-a-step-dropped", "pruned.json", "has steps")
def _(c):
    edit_json(c.copy() / "pruned.json", lambda d: d["steps"].pop(1))
    return c.resume()


@case("resume-metrics-cut-mid-row", "metrics.csv", "line")
def _(c):
    path = c.copy() / "metrics.csv"
    text = path.read_text()
    row_start = text.index("\n", len(text) // 2) + 1
    path.write_text(text[:row_start + 12])  # the first 12 characters of a row in the middle, and no more
    return c.resume()


@case("resume-finished-run-metrics-cut-at-a-row-end", "metrics.csv", "differs from what step 3 committed")
def _(c):
    path = c.copy() / "metrics.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-2]))  # the finished run's last step
    return c.resume()


@case("resume-metrics-deleted", "metrics.csv", "not found")
def _(c):
    (c.copy() / "metrics.csv").unlink()
    return c.resume()


@case("resume-metrics-random-bytes", "metrics.csv", "not a CSV file")
def _(c):
    (c.copy() / "metrics.csv").write_bytes(garbage())
    return c.resume()


@case("resume-progress-garbage", "progress.json", "not a progress record")
def _(c):
    (c.copy() / "state" / "progress.json").write_bytes(garbage())
    return c.resume()


@case("resume-progress-wrong-key", "progress.json", "not a progress record")
def _(c):
    edit_json(c.copy() / "state" / "progress.json", lambda d: d.update(done=d.pop("completed_step")))
    return c.resume()


@case("resume-progress-step-beyond-the-run", "progress.json", "step 7", "3-step run")
def _(c):
    edit_json(c.copy() / "state" / "progress.json", lambda d: d.update(completed_step=7))
    return c.resume()


@case("resume-progress-missing-metrics-has-later-steps", "progress.json", "missing", "steps up to 3")
def _(c):
    (c.copy() / "state" / "progress.json").unlink()
    return c.resume()


@case("resume-config-garbage", "config.toml", "not valid TOML")
def _(c):
    (c.copy() / "config.toml").write_bytes(b"steps = = [\x01 garbage\n")
    return c.resume()


@case("resume-config-latin-1", "config.toml", "not UTF-8")
def _(c):
    (c.copy() / "config.toml").write_bytes('name = "Müller"\n'.encode("latin-1"))
    return c.resume()


@case("resume-config-fewer-steps-than-done", "progress.json", "step 3", "2-step run")
def _(c):
    edit_toml(c.copy() / "config.toml", "steps", "2")
    return c.resume()


@case("resume-config-other-seed", "config.toml")
def _(c):
    """config.toml edited after the run: its results were made with another seed, and resume cannot tell."""
    edit_toml(c.copy() / "config.toml", "seed", "1")
    return c.resume()


# The folder holds a run's files, so "start it without --resume" would be refused ("already exists").
NOT_A_FRESH_START = ("start it without --resume",)


@case("resume-config-is-a-folder", "config.toml", absent=NOT_A_FRESH_START)
def _(c):
    path = c.copy() / "config.toml"
    path.unlink()
    path.mkdir()
    return c.resume()


@case("resume-config-missing", "config.toml", absent=NOT_A_FRESH_START)
def _(c):
    (c.copy() / "config.toml").unlink()
    return c.resume()


@case("resume-with-other-settings", "different settings", "steps")
def _(c):
    c.copy()
    return c.resume("--steps", "2")


@case("resume-empty-folder", "nothing to resume", "no step was finished")
def _(c):
    c.out.mkdir()
    return ["run", *c.flags, "--resume", "--output", c.out]


@case("resume-nonexistent-folder", "nothing to resume")
def _(c):
    return ["run", *c.flags, "--resume", "--output", c.dir / "none"]


@case("existing-run-folder-without-resume", "already exists", "--resume")
def _(c):
    c.copy()
    return ["run", *c.flags, "--output", c.run]


@case("output-is-a-file", "is a file, not a folder")
def _(c):
    c.write("out", "precious\n")
    return c.fresh()


@case("output-in-an-unwritable-place", "selprune-test", "--output", status=4)
def _(c):
    return c.fresh("--output", unwritable_output(c.dir))


# config files and settings

@case("config-save-model-no", 'save_model = "no" should be true or false')
def _(c):
    return c.fresh("--config", c.write("c.toml", 'save_model = "no"\n'))


@case("config-steps-ten", 'steps = "ten" should be an integer')
def _(c):
    return c.fresh("--config", c.write("c.toml", 'steps = "ten"\n'))


@case("config-fraction-string", 'fraction = "0.05" should be a number')
def _(c):
    return c.fresh("--config", c.write("c.toml", 'fraction = "0.05"\n'))


@case("config-forget-number", "forget = 5 should be a string")
def _(c):
    return c.fresh("--config", c.write("c.toml", "forget = 5\n"))


@case("config-unknown-key", "c.toml", "unknown key(s) steeps")
def _(c):
    return c.fresh("--config", c.write("c.toml", "steeps = 3\n"))


@case("config-is-a-folder", "is a folder")
def _(c):
    (c.dir / "c.toml").mkdir()
    return c.fresh("--config", c.dir / "c.toml")


@case("eps-nan", "--eps is nan")
def _(c):
    return c.fresh("--eps", "nan")


@case("eps-inf", "--eps is inf")
def _(c):
    return c.fresh("--eps", "inf")


@case("fraction-zero", "outside (0, 1]")
def _(c):
    return c.fresh("--fraction", "0")


@case("fraction-above-one", "outside (0, 1]")
def _(c):
    return c.fresh("--fraction", "1.5")


@case("fraction-prunes-no-unit", "--fraction 0.005 prunes 0", "48 ff units")
def _(c):
    return c.fresh("--fraction", "0.005")


@case("per-layer-fraction-past-100%", "4 steps x 0.3")
def _(c):
    return c.fresh("--selection", "per-layer", "--fraction", "0.3", "--steps", "4")


@case("per-layer-rounding-past-a-layer", "16 steps x 2 of a layer's 24 ff units", "use at most --steps 12")
def _(c):  # 0.0625 x 24 = 1.5 rounds to 2: step 13 would find nothing left
    return c.fresh("--selection", "per-layer", "--fraction", "0.0625", "--steps", "16")


@case("global-rounding-past-all-units", "31 steps x 2 of the 48 ff units", "use at most --steps 24")
def _(c):  # 0.0313 x 48 = 1.5 rounds to 2
    return c.fresh("--fraction", "0.0313", "--steps", "31")


@case("steps-zero", "steps must be at least 1")
def _(c):
    return c.fresh("--steps", "0")


@case("chunk-len-one", "chunk-len must be at least 2")
def _(c):
    return c.fresh("--chunk-len", "1")


@case("chunk-len-beyond-context", "--chunk-len 100000", "context of 64 tokens")
def _(c):
    return c.fresh("--chunk-len", "100000")


@case("skip-top-tokens-negative", "skip-top-tokens", "-1")
def _(c):
    return c.fresh("--skip-top-tokens", "-1")


@case("name-escapes", "'../../x' is not a plain folder name")
def _(c):
    return ["run", *c.flags, "--name", "../../x"]


@case("group-unknown", "unknown group 'nope'")
def _(c):
    return c.fresh("--group", "nope")


@case("freq-scorer-on-attention", "freq scorer")
def _(c):
    return c.fresh("--scorer", "freq", "--group", "attn-value")


# models and devices

@case("model-unknown-name", "unknown model 'no-such-model'")
def _(c):
    return c.fresh("--model", "no-such-model")


@case("model-hub-id-offline", "nobody-xyz/no-such-model", "offline")
def _(c):
    return c.fresh("--model", "nobody-xyz/no-such-model")


@case("model-folder-without-config", "has no config.json")
def _(c):
    (c.model_copy() / "config.json").unlink()
    return c.fresh("--model", c.dir / "model")


@case("model-config-garbage", "config.json", "not valid JSON")
def _(c):
    (c.model_copy() / "config.json").write_bytes(garbage())
    return c.fresh("--model", c.dir / "model")


@case("model-gguf-garbage", "bad.gguf", "not a valid GGUF file")
def _(c):
    return c.fresh("--model", c.write("bad.gguf", b"GGUF" + garbage()))


@case("model-safetensors-is-text", "model.safetensors", "not a valid safetensors file")
def _(c):
    (c.model_copy() / "model.safetensors").write_text("this is not a tensor file\n")
    return c.fresh("--model", c.dir / "model")


@case("model-tokenizer-garbage", "tokenizer.json", "not valid JSON")
def _(c):
    (c.model_copy() / "tokenizer.json").write_bytes(garbage())
    return c.fresh("--model", c.dir / "model")


@case("device-meta", "device 'meta'")
def _(c):
    return c.fresh("--device", "meta")


@case("device-map-unknown", "unknown device map 'foo'")
def _(c):
    return c.fresh("--device-map", "foo")


# datasets

@case("dataset-unknown", "'no-such-dataset' is neither a built-in")
def _(c):
    return c.fresh("--forget", "no-such-dataset")


@case("dataset-empty-file", "empty.txt", "is empty")
def _(c):
    return c.fresh("--forget", c.write("empty.txt", ""))


@case("dataset-too-small", "small.txt", "too few")
def _(c):
    return c.fresh("--forget", c.write("small.txt", "hello world\n"))


@case("forget-equals-retain", "both")
def _(c):
    same = str(c.data / "forget")
    return c.fresh("--forget", same, "--retain", same)


# reports

@case("report-metrics-random-bytes", "metrics.csv", "not a CSV file")
def _(c):
    (c.copy() / "metrics.csv").write_bytes(garbage())
    return ["report", c.run]


@case("report-nonexistent-folder", "none", "not a folder")
def _(c):
    return ["report", c.dir / "none"]


@case("report-into-another-run-folder", "is a run folder")
def _(c):
    a, b = c.copy("a"), c.copy("b")
    return ["report", a, b, "-o", a]


def unwritable_output(folder: Path) -> Path:
    """A run folder that cannot be made: under a read-only folder, or (as root, whom permissions do not stop)
    under a place the kernel refuses writes to."""
    if os.geteuid() != 0:
        locked = folder / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "selprune-test" / "run"
    for place in ("/sys/selprune-test/run", "/proc/selprune-test/run"):
        try:
            os.makedirs(place)
        except PermissionError:
            return Path(place)
        except OSError:
            continue
        shutil.rmtree(Path(place).parent, ignore_errors=True)
    pytest.skip("running as root, and no place refuses a new folder with a permission error")


@dataclass
class Outcome:
    result: Result | None
    before: dict[str, str] | None = None
    after: dict[str, str] | None = None
    argv: list[str] | None = None
    setup_error: BaseException | None = None


@pytest.fixture(scope="module")
def fuzz(request, finished, tiny_llama, tiny_data) -> dict[str, Outcome]:
    """Every selected case's command, WORKERS at a time; each test below judges one."""
    base = finished.root / "fuzz"
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("case"), Case)}

    def one(case: Case) -> Outcome:
        folder = base / case.id
        folder.mkdir(parents=True)
        try:
            argv = [str(a) for a in case.make(Ctx(folder, finished, tiny_llama, tiny_data))]
        except BaseException as exc:  # noqa: BLE001 (a skip, or a broken case: reported by its test)
            return Outcome(None, setup_error=exc)
        before = snapshot(folder)
        result = selprune(argv, folder, finished.env)
        return Outcome(result, before, snapshot(folder), argv)

    cases = [c for c in CASES if c.id in selected]
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip([c.id for c in cases], pool.map(one, cases)))


def _param(c: Case):
    marks = [pytest.mark.xfail(strict=False, reason=c.xfail)] if c.xfail else []
    return pytest.param(c, id=c.id, marks=marks)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_or_damaged_state_is_one_line_and_changes_nothing(fuzz, case):
    outcome = fuzz[case.id]
    if outcome.setup_error is not None:
        raise outcome.setup_error
    result, shown = outcome.result, f"selprune {' '.join(outcome.argv)}\n{outcome.result}"
    assert "Traceback" not in result.stderr, shown
    assert result.returncode == case.status, shown
    lines = error_lines(result.stderr)
    assert len(lines) == 1, shown
    assert lines[0].startswith("selprune: error:"), shown
    for phrase in case.phrases:
        assert phrase in lines[0], f"{phrase!r} not in the error line\n{shown}"
    for phrase in case.absent:
        assert phrase not in lines[0], f"{phrase!r} in the error line\n{shown}"
    assert without_empty_folders(outcome.after) == without_empty_folders(outcome.before), \
        f"a refused command wrote or changed files\n{shown}"


# -- two processes on one run folder -----------------------------------------------------------------------


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended (exit {proc.returncode}) before {what}:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.02)


@contextlib.contextmanager
def stopped(proc: subprocess.Popen):
    """proc frozen (SIGSTOP) within, still holding what it holds: however slow this machine, it is still
    running when the next command tries its folder, and that command must not wait for it."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def test_a_second_process_on_a_run_folder_refuses_at_once_and_the_first_is_undisturbed(finished, tiny_llama,
                                                                                      tiny_data, tmp_path):
    flags = tiny_flags(tiny_llama, tiny_data, steps=CONCURRENT_STEPS)
    out = tmp_path / "shared"
    alone = tmp_path / "alone"
    t0 = time.perf_counter()
    reference = start(["run", *flags, "--quiet", "--output", alone], tmp_path, finished.env)  # side by side
    first = start(["run", *flags, "--quiet", "--output", out], tmp_path, finished.env)
    try:
        wait_for(lambda: holds(out, first.pid), first, "the lock held by the first run")
        with stopped(first):  # the folder holds only the lock: nothing tells a second run it is taken
            second = selprune(["run", *flags, "--output", out], tmp_path, finished.env, REFUSAL_TIMEOUT)
        wait_for(lambda: (out / "state" / "progress.json").is_file(), first, "step 0 committed")
        with stopped(first):  # now there is a run to resume, but it is not finished
            second_resume = selprune(["run", *flags, "--resume", "--output", out], tmp_path, finished.env,
                                     REFUSAL_TIMEOUT)
    finally:
        result = finish(first, t0)
        reference = finish(reference, t0)
    for refused in (second, second_resume):
        lines = error_lines(refused.stderr)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, str(refused)
        assert len(lines) == 1 and lines[0].startswith("selprune: error:") and "in use" in lines[0], str(refused)
        assert f"pid {first.pid}" in lines[0], str(refused)
    assert result.returncode == 0, str(result)

    assert reference.returncode == 0, str(reference)
    assert_same_results(out, alone, "from the same run made alone")


# -- kill -9 at random moments -----------------------------------------------------------------------------


@dataclass
class Killed:
    state: str  # what the kill left, for messages
    resumed: Result  # the --resume after it
    restarted: Result | None  # the fresh start, where resume found nothing committed
    out: Path


def kill_and_resume(finished: Finished, folder: Path, seed: int) -> Killed:
    """The tiny run, SIGKILLed at a random moment, then resumed, or started again if nothing was committed.

    Seed s kills in phase s (see phase_began), at a random point of that phase as long as it took the reference
    run: the phase's start is waited for, so that a slow, loaded machine still kills the run where meant.
    """
    out = folder / "killed"
    folder.mkdir(parents=True)
    delay = random.Random(seed).uniform(0, finished.phases[seed])
    t0 = time.perf_counter()
    proc = start(["run", *finished.flags, "--quiet", "--output", out], folder, finished.env)
    while not phase_began(out, proc.pid, seed) and proc.poll() is None:
        time.sleep(0.005)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL: no handler, no finally block, no flush
    killed = finish(proc, t0)
    state = (f"seed {seed}: killed {delay:.2f} s into phase {seed} (exit {killed.returncode}), at completed step "
             f"{completed_step(out)}, leaving {sorted(snapshot(out)) if out.exists() else 'no folder'}")
    resumed = selprune(["run", *finished.flags, "--quiet", "--resume", "--output", out], folder, finished.env)
    restarted = None
    if resumed.returncode == 2 and "nothing to resume" in resumed.stderr:
        restarted = selprune(["run", *finished.flags, "--quiet", "--output", out], folder, finished.env)
    return Killed(state, resumed, restarted, out)


@pytest.fixture(scope="module")
def kills(finished) -> dict[int, Killed]:
    return kill_each(finished, KILL_SEEDS)


def kill_each(finished, seeds) -> dict[int, Killed]:
    """kill_and_resume a copy of the finished run's command for each seed, WORKERS at a time."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(seeds, pool.map(lambda seed: kill_and_resume(finished, finished.root / f"kill{seed}", seed),
                                        seeds)))


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill_9_at_a_random_moment_then_resume_gives_the_uninterrupted_result(finished, kills, seed):
    k = kills[seed]
    print(k.state)
    if k.restarted is None:
        assert k.resumed.returncode == 0, f"{k.state}\n{k.resumed}"
    else:  # nothing was committed: resume says so in one line, and a fresh start is accepted
        lines = error_lines(k.resumed.stderr)
        assert len(lines) == 1 and "start it without --resume" in lines[0], f"{k.state}\n{k.resumed}"
        assert "at completed step -1" in k.state, f"{k.state}: a committed step was not resumed\n{k.resumed}"
        assert k.restarted.returncode == 0, f"{k.state}\n{k.restarted}"
    assert_same_results(k.out, finished.path, f"after a kill -9 ({k.state})")


# -- wrong answers with exit 0 (issue 23), in process ------------------------------------------------------


def every_settings_class() -> list[type]:
    """The settings dataclass of every command (each module that defines one is imported first)."""
    import importlib

    from selprune.config import Settings

    for module in ("selprune.config", "selprune.relearn", "selprune.inspection.settings", "selprune.unlearn.settings"):
        with contextlib.suppress(ModuleNotFoundError):  # unlearn: only where that command exists
            importlib.import_module(module)
    return Settings.__subclasses__()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_float_setting_of_every_command_must_be_finite(bad):
    """A float setting, alone or as one of several (relearn's --lr 1e-4 nan), that is not finite is refused."""
    import dataclasses
    import typing

    from selprune.errors import UserError

    checked = []
    for cls in every_settings_class():
        for field in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[field.name]
            if hint == tuple[float, ...]:
                value = (1e-4, bad)
            elif float in (hint, *typing.get_args(hint)):
                value = bad
            else:
                continue
            with pytest.raises(UserError, match="finite"):
                dataclasses.replace(cls(), **{field.name: value}).check_finite()
            checked.append(f"{cls.__name__}.{field.name}")
    assert "RelearnConfig.lr" in checked and "RunConfig.harden_lr" in checked, checked


@pytest.mark.parametrize("lr", ["nan", "inf"])
def test_relearn_with_a_learning_rate_that_is_not_finite_is_one_line(capsys, finished, tmp_path, lr):
    run = Ctx(tmp_path, finished, None, None).copy()
    before = snapshot(run)
    conftest.one_error_line(capsys, ["relearn", str(run), "--lr", "1e-4", lr, "--quiet"], f"--lr is {lr}", "finite")
    assert snapshot(run) == before


def tiny_run_argv(model, data: Path, output, **overrides) -> list[str]:
    return ["run", *tiny_flags(model, data, **overrides), "--output", str(output), "--quiet"]


RELEARN_SMALL = ["--max-steps", "1", "--batch-size", "2", "--chunk-len", "16", "--relearn-tokens", "96",
                 "--eval-tokens", "64", "--no-random-control", "--device", "cpu", "--quiet"]


def test_a_run_records_its_model_by_absolute_path_and_refuses_another_model_there(capsys, tmp_path, tiny_data,
                                                                                   monkeypatch):
    from selprune.cli import main

    conftest.save_tiny_model("llama", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    assert main(tiny_run_argv("./m", tiny_data, "run", steps=2)) == 0
    assert saved_config(tmp_path / "run")["model"] == str((tmp_path / "m").resolve())
    progress_path = tmp_path / "run" / "state" / "progress.json"
    progress = json.loads(progress_path.read_text())
    assert "model" in progress

    progress_path.write_text(json.dumps({k: v for k, v in progress.items() if k != "model"}))
    monkeypatch.chdir(tiny_data)  # another directory: the run still finds its model
    assert main(["run", "--resume", "--output", str(tmp_path / "run"), "--quiet"]) == 0, "a folder without a fingerprint"
    progress_path.write_text(json.dumps(progress))

    shutil.rmtree(tmp_path / "m")
    conftest.save_tiny_model("llama", tmp_path / "m", seed=1)  # another model of the same shape, at the same path
    capsys.readouterr()
    run = str(tmp_path / "run")
    for argv in (["run", "--resume", "--output", run, "--quiet"], ["relearn", run, *RELEARN_SMALL],
                 ["inspect", run, "--prompts", "1", "--functions", "0", "--no-lens", "--quiet"]):
        conftest.one_error_line(capsys, argv, "is not the model", "was made with")
    assert not (tmp_path / "run" / "relearn").exists() and not (tmp_path / "run" / "inspect").exists()


def saved_config(folder: Path) -> dict:
    from selprune.config import read_toml

    return read_toml(folder / "config.toml", "config file", "a run's")


def test_a_moved_run_folder_resumes_its_relearn_results(finished, tmp_path):
    from selprune.cli import main

    run = Ctx(tmp_path, finished, None, None).copy()
    assert main(["relearn", str(run), *RELEARN_SMALL]) == 0
    results = (run / "relearn" / "relearn.csv").read_text()
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert main(["relearn", str(moved), "--resume", "--quiet"]) == 0
    assert (moved / "relearn" / "relearn.csv").read_text() == results


def unfinished_run(tiny_config, folder: Path, monkeypatch, steps_done: int) -> Path:
    """A 3-step run of the tiny Llama, crashed after committing `steps_done` steps."""
    from selprune import run as run_module
    from selprune.rundir import RunFolder

    config = tiny_config(folder, steps=3)
    real = run_module.select

    def crash_after(*args, **kw):
        if RunFolder(folder).completed_step() == steps_done:
            raise conftest.Crash()
        return real(*args, **kw)

    monkeypatch.setattr(run_module, "select", crash_after)
    with pytest.raises(conftest.Crash):
        run_module.run(config, quiet=True)
    monkeypatch.undo()
    return folder


def test_relearn_on_an_unfinished_run_records_the_step_it_attacked(capsys, tiny_config, tmp_path, monkeypatch):
    from selprune.cli import main
    from selprune.relearn import RelearnConfig

    run = unfinished_run(tiny_config, tmp_path / "run", monkeypatch, steps_done=1)
    assert main(["relearn", str(run), *RELEARN_SMALL[:-1]]) == 0
    assert "unfinished (1 of 3 steps done)" in capsys.readouterr().out
    settings = run / "relearn" / "settings.toml"
    assert RelearnConfig.from_toml(settings).step == 1
    assert main(["run", "--resume", "--output", str(run), "--quiet"]) == 0  # the run finishes: 3 steps
    assert main(["relearn", str(run), "--resume", *RELEARN_SMALL[:-1]]) == 0
    assert "after step 1" in capsys.readouterr().out, "resume presents the results as step 3's"
    assert RelearnConfig.from_toml(settings).step == 1


def test_relearn_on_a_run_with_no_finished_step_says_so(capsys, tiny_config, tmp_path, monkeypatch):
    run = unfinished_run(tiny_config, tmp_path / "run", monkeypatch, steps_done=0)
    line = conftest.one_error_line(capsys, ["relearn", str(run), *RELEARN_SMALL], "no finished pruning step yet")
    assert "between 1 and 0" not in line


@pytest.mark.parametrize("text", ["", "[grid]\n", "[settings]\nsteps = 2\n[grid]\n"], ids=["empty", "empty-grid",
                                                                                         "settings-only"])
def test_a_grid_that_names_no_run_is_refused(capsys, tmp_path, text):
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    conftest.one_error_line(capsys, ["sweep", str(grid), "--dry-run"], "names no run")
    conftest.one_error_line(capsys, ["sweep", str(grid), "--output", str(tmp_path / "s")], "names no run")
    assert not (tmp_path / "s").exists()


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    from selprune import atomic
    from selprune.cli import explain

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.fsync raises it: no file name

    monkeypatch.setattr(atomic.os, "fsync", full)
    target = tmp_path / "metrics.csv"
    with pytest.raises(OSError) as caught:
        atomic.write_text(target, "step\n")
    status, line = explain(caught.value)
    assert status == 4 and str(target) in line and "disk is full" in line, line
    assert list(tmp_path.iterdir()) == [], "a half-written file was left"


def test_harden_lr_without_harden_is_refused(capsys, tiny_llama, tiny_data, tmp_path):
    conftest.one_error_line(capsys, tiny_run_argv(tiny_llama, tiny_data, tmp_path / "run", harden_lr=1e-3),
                            "--harden-lr", "--harden is off")


def test_harden_says_what_it_costs_before_it_starts(capsys, tiny_config, tmp_path):
    from selprune.run import Run, hardening_cost

    config = tiny_config(tmp_path / "run", harden=50, harden_tokens=64, harden_chunk_len=16, harden_batch_size=2,
                         harden_holdout=0)
    Run(config).load()
    out = capsys.readouterr().out
    assert f"about {hardening_cost(config):.1f}x the plain run's forward passes" in out, out
    # 3 steps: 2 x 50 fine-tuning steps of 2 x 16 tokens, 3 passes each, over 4 evaluations x 2 x 200 + 3 x 2 x 300
    assert hardening_cost(config) == pytest.approx((3400 + 3 * 2 * 50 * 32) / 3400)


def test_sweep_dry_run_refuses_a_damaged_partial_run_as_the_sweep_does(capsys, tiny_llama, tiny_data, tmp_path,
                                                                      monkeypatch):
    from selprune.sweep import load

    settings = dict(conftest.TINY_RUN, model=str(tiny_llama), forget=str(tiny_data / "forget"),
                    retain=str(tiny_data / "retain"))
    grid = tmp_path / "g.toml"
    grid.write_text("[settings]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items() if k != "steps")
                    + "[grid]\nsteps = [3]\n")
    out = tmp_path / "s"
    planned = load(grid, out).runs[0]
    conftest.crash_in_step_2(monkeypatch, planned.config)  # a partial run: step 1 of 3 committed
    (planned.folder.path / "pruned.json").write_bytes(garbage())
    capsys.readouterr()
    before = snapshot(out)
    dry = conftest.one_error_line(capsys, ["sweep", str(grid), "--output", str(out), "--dry-run"], "cannot resume",
                                  "pruned.json")
    real_line = conftest.one_error_line(capsys, ["sweep", str(grid), "--output", str(out), "--quiet"])
    assert dry == real_line
    assert snapshot(out) == before


# -- the newer commands: unlearn, unlearn --from, run --heal (issue 23) ------------------------------------


def in_process(argv: list) -> tuple[int, list[str]]:
    """`selprune ARGV` in this process (a refusal needs no process of its own): its status and stderr lines."""
    from selprune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, error_lines(err.getvalue())


def assert_one_line(outcome: tuple[int, list[str]], *phrases: str, status: int = 2) -> None:
    code, lines = outcome
    assert code == status and len(lines) == 1 and lines[0].startswith("selprune: error:"), outcome
    for phrase in phrases:
        assert phrase in lines[0], outcome


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / LOCK).unlink(missing_ok=True)
    return target


def files_below(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


UNLEARN_STEPS = 3
UNLEARN_LRS = ("1e-3", "3e-2")
CHECKPOINTS = len(UNLEARN_LRS) * (UNLEARN_STEPS + 1)  # one a step (--eval-every 1) and step 0, per learning rate


def unlearn_argv(model, data: Path) -> list[str]:
    """A tiny 2 x 3-step graddiff of the tiny Llama, on the data of the tiny run (so --from takes that run)."""
    return ["unlearn", "--model", model, "--forget", data / "forget", "--retain", data / "retain", "--method",
            "graddiff", "--lr", *UNLEARN_LRS, "--steps", UNLEARN_STEPS, "--eval-every", 1, "--batch-size", 2,
            "--chunk-len", 32, "--score-tokens", 300, "--eval-tokens", 200, "--skip-top-tokens", 5, "--dtype",
            "float32", "--no-compile", "--device", "cpu"]


def checkpoints_committed(folder: Path) -> int:
    """The checkpoints that an unlearning's learning rates have committed so far, all together."""
    done = 0
    for progress in folder.glob("lr-*/state/progress.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            done += json.loads(progress.read_text())["completed_step"] + 1
    return done


def unlearning_results(folder: Path) -> dict[str, bytes]:
    """What an unlearning decides: its metrics, each learning rate's and the saved model, file by file."""
    names = ["metrics.csv", *(p.relative_to(folder).as_posix() for p in sorted(folder.glob("lr-*/metrics.csv")))]
    return {**{name: (folder / name).read_bytes() for name in names},
            **{f"model/{k}": v for k, v in files_below(folder / "model").items()}}


@dataclass
class Unlearned:
    path: Path  # a finished unlearning: copy it, never change it
    argv: list[str]  # its command, without --output
    refusals: dict[str, tuple[int, list[str]]]  # a second unlearning on its folder while it ran: new, resume
    pid: int


@pytest.fixture(scope="module")
def unlearned(finished, tiny_llama, tiny_data) -> Unlearned:
    """The tiny unlearning, uninterrupted but for a freeze (SIGSTOP) in which a second one tries its folder."""
    root = finished.root / "unlearn"
    root.mkdir()
    argv, out = [str(a) for a in unlearn_argv(tiny_llama, tiny_data)], root / "reference"
    t0 = time.perf_counter()
    proc = start([*argv, "--quiet", "--output", out], root, finished.env)
    refusals = {}
    try:
        wait_for(lambda: holds(out, proc.pid), proc, "the unlearning's lock")
        with stopped(proc):  # the folder holds only the lock
            refusals["new"] = in_process([*argv, "--output", out, "--quiet"])
        wait_for(lambda: checkpoints_committed(out) >= 1, proc, "its first checkpoint")
        with stopped(proc):  # a checkpoint to resume from, and the unlearning still running
            refusals["resume"] = in_process(["unlearn", "--resume", "--output", out, "--quiet"])
    finally:
        result = finish(proc, t0)
    assert result.returncode == 0, str(result)
    assert (out / "state" / "result.json").is_file() and checkpoints_committed(out) == CHECKPOINTS
    return Unlearned(out, argv, refusals, proc.pid)


def test_a_second_unlearning_on_its_folder_refuses_at_once(unlearned):
    for refusal in unlearned.refusals.values():
        assert_one_line(refusal, "in use", f"pid {unlearned.pid}")


# name -> the signal, and how many checkpoints are committed when it is sent (CHECKPOINTS: all, in the last writes)
UNLEARN_SIGNALS = {"kill-9-second-lr": (signal.SIGKILL, 5),
                   "kill-9-after-the-last-checkpoint": (signal.SIGKILL, CHECKPOINTS),
                   "sigint": (signal.SIGINT, 3), "sigterm": (signal.SIGTERM, 6)}
STOPPED_LINES = {signal.SIGINT: (130, "selprune: interrupted; finished checkpoints are saved (continue with --resume)"),
                 signal.SIGTERM: (143, "selprune: terminated; finished checkpoints are saved (continue with --resume)")}


@contextlib.contextmanager
def ctrl_c_reaches_children():
    """A shell's background job ignores SIGINT, and its children inherit that; within, they get Python's
    KeyboardInterrupt as a user's Ctrl-C gives it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to the default on exec
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def unlearn_stops(unlearned, finished) -> dict[str, tuple[Result, Result]]:
    """Each case's unlearning, stopped by its signal as soon as its checkpoint count is seen, then resumed.
    The loop never waits on one of them: a step takes a tenth of a second, and each is stopped mid-way."""
    root = unlearned.path.parent
    victims, signalled = {}, set()
    with ctrl_c_reaches_children():
        for name in UNLEARN_SIGNALS:
            victims[name] = (start([*unlearned.argv, "--quiet", "--output", root / name], root, finished.env),
                             time.perf_counter())
    while len(signalled) < len(victims):
        for name, (proc, _) in victims.items():
            sig, at = UNLEARN_SIGNALS[name]
            if name not in signalled and (proc.poll() is not None or checkpoints_committed(root / name) >= at):
                os.kill(proc.pid, sig)  # a process that has ended but is not yet reaped ignores it
                signalled.add(name)
        time.sleep(0.005)
    results = {name: finish(proc, t0) for name, (proc, t0) in victims.items()}
    with ThreadPoolExecutor(WORKERS) as pool:
        resumed = dict(zip(UNLEARN_SIGNALS, pool.map(
            lambda name: selprune(["unlearn", "--resume", "--output", root / name, "--quiet"], root, finished.env),
            UNLEARN_SIGNALS)))
    return {name: (results[name], resumed[name]) for name in UNLEARN_SIGNALS}


@pytest.mark.parametrize("name", UNLEARN_SIGNALS)
def test_an_unlearning_stopped_by_a_signal_resumes_to_the_uninterrupted_result(unlearned, unlearn_stops, name):
    (stopped_run, resumed), (sig, at) = unlearn_stops[name], UNLEARN_SIGNALS[name]
    if sig == signal.SIGKILL:
        assert stopped_run.returncode == -signal.SIGKILL or at == CHECKPOINTS, str(stopped_run)
    else:
        status, line = STOPPED_LINES[sig]
        assert stopped_run.returncode == status and error_lines(stopped_run.stderr) == [line], str(stopped_run)
    assert resumed.returncode == 0, str(resumed)
    folder = unlearned.path.parent / name
    assert unlearning_results(folder) == unlearning_results(unlearned.path), f"{name}: results differ"


def last_checkpoint(folder: Path, name: str) -> Path:
    """A file of the last learning rate's last checkpoint (weights-3.safetensors, ...) of an unlearning."""
    return folder / f"lr-{float(UNLEARN_LRS[-1]):g}" / "state" / name.replace("LAST", str(UNLEARN_STEPS))


def unfinished(folder: Path) -> Path:
    """A finished unlearning made unfinished, as one killed before its result was written: resume reads all."""
    (folder / "state" / "result.json").unlink()
    (folder / "metrics.csv").unlink()
    return folder


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


# name -> (damage done to a copy of the finished unlearning, phrases of the refusal)
UNLEARN_DAMAGE = {
    "weights-cut": (lambda f: cut(last_checkpoint(unfinished(f), "weights-LAST.safetensors")),
                    ("weights-3.safetensors", "differs from what checkpoint 3 committed")),
    "weights-missing": (lambda f: last_checkpoint(unfinished(f), "weights-LAST.safetensors").unlink(),
                        ("weights-3.safetensors", "missing")),
    "optimizer-cut": (lambda f: cut(last_checkpoint(unfinished(f), "optimizer-LAST.pt")),
                      ("optimizer-3.pt", "differs from what checkpoint 3 committed")),
    "progress-garbage": (lambda f: last_checkpoint(unfinished(f), "progress.json").write_bytes(garbage()),
                         ("progress.json", "not a progress record")),
    "progress-cut": (lambda f: cut(last_checkpoint(unfinished(f), "progress.json")),
                     ("progress.json", "not a progress record")),
    "lr-metrics-cut": (lambda f: cut(last_checkpoint(unfinished(f), "../metrics.csv")), ("metrics.csv",)),
    "model-fingerprint-garbage": (lambda f: (unfinished(f) / "state" / "model.json").write_bytes(garbage()),
                                  ("model.json",)),
    "result-garbage": (lambda f: (f / "state" / "result.json").write_bytes(garbage()), ("result.json",)),
    "result-cut": (lambda f: cut(f / "state" / "result.json"), ("result.json",)),
    "result-without-its-lr": (lambda f: edit_json(f / "state" / "result.json", lambda d: d.pop("lr")),
                              ("result.json",)),
    "result-kept-step-a-string": (lambda f: edit_json(f / "state" / "result.json", lambda d: d.update(kept_step="3")),
                                  ("result.json",)),
}


@pytest.mark.parametrize("name", UNLEARN_DAMAGE)
def test_a_damaged_unlearning_folder_is_refused_on_resume_with_one_line(unlearned, tmp_path, name):
    damage, phrases = UNLEARN_DAMAGE[name]
    folder = copy_folder(unlearned.path, tmp_path / "u")
    damage(folder)
    before = snapshot(folder)
    assert_one_line(in_process(["unlearn", "--resume", "--output", folder, "--quiet"]), *phrases)
    assert snapshot(folder) == before, "a refused resume changed the folder"


def test_an_unlearning_into_an_existing_folder_without_resume_is_refused(unlearned, tmp_path):
    folder = copy_folder(unlearned.path, tmp_path / "u")
    before = snapshot(folder)
    assert_one_line(in_process([*unlearned.argv, "--output", folder, "--quiet"]), "already exists", "--resume")
    assert snapshot(folder) == before


def test_an_unlearning_killed_between_its_first_two_files_can_go_on(unlearned, tmp_path, monkeypatch):
    """Its first commit writes config.toml and state/model.json: a kill between them must leave a folder that
    --resume (or a new start) accepts, not one that both refuse."""
    from selprune import atomic

    real = atomic.write_text
    written = []

    def killed_at_the_second(path, text):
        if written:
            raise conftest.Crash()
        written.append(path)
        real(path, text)

    monkeypatch.setattr(atomic, "write_text", killed_at_the_second)
    out = tmp_path / "u"
    assert in_process([*unlearned.argv, "--steps", 1, "--output", out, "--quiet"])[0] == 1  # the crash: a "bug"
    monkeypatch.undo()
    assert [p.name for p in written] == ["config.toml"], "the folder's settings are written first"
    assert in_process(["unlearn", "--resume", "--output", out, "--quiet"]) == (0, [])
    assert (out / "state" / "model.json").is_file() and (out / "state" / "result.json").is_file()


UNLEARN_FLOATS = [("--lr", "nan"), ("--lr", "inf"), ("--npo-beta", "inf"), ("--retain-weight", "nan"),
                  ("--rmu-coefficient", "inf"), ("--rmu-alpha", "nan"), ("--max-retain-drop", "nan"),
                  ("--noise", "nan"), ("--noise-scale", "inf")]


@pytest.mark.parametrize("option, value", UNLEARN_FLOATS, ids=[f"{o[2:]}-{v}" for o, v in UNLEARN_FLOATS])
def test_every_float_setting_of_unlearn_must_be_finite(tiny_llama, tiny_data, tmp_path, option, value):
    method = ["--method", "distill"] if option.startswith("--noise") else []
    out = tmp_path / "u"
    argv = [*unlearn_argv(tiny_llama, tiny_data), *method, option, value, "--output", out, "--quiet"]
    assert_one_line(in_process(argv), f"{option} is {value}", "finite")
    assert not out.exists()


def shift_units(data: dict) -> None:
    """pruned.json with the same counts per step and layer as before, other units."""
    for entry in data["steps"]:
        entry["pruned"] = {layer: sorted((u + 12) % data["units_per_layer"] for u in units)
                           for layer, units in entry["pruned"].items()}


@pytest.mark.parametrize("damage, phrases", [
    (lambda run: (run / "pruned.json").write_bytes(garbage()), ("pruned.json", "malformed")),
    (lambda run: edit_json(run / "pruned.json", shift_units), ("pruned.json", "differs from what step 3 committed")),
    (lambda run: (run / "state" / "progress.json").write_bytes(garbage()), ("progress.json",)),
], ids=["pruned-garbage", "pruned-other-units", "progress-garbage"])
def test_unlearn_from_a_damaged_run_is_refused_with_one_line(finished, tiny_llama, tiny_data, tmp_path, damage,
                                                             phrases):
    run = copy_folder(finished.path, tmp_path / "run")
    damage(run)
    before, out = snapshot(run), tmp_path / "u"
    argv = [*unlearn_argv(tiny_llama, tiny_data), "--from", run, "--output", out, "--quiet"]
    assert_one_line(in_process(argv), *phrases)
    assert snapshot(run) == before and not out.exists()


HEAL_KILL_SEEDS = (2,)  # killed while step 2 is pruned and healed: resume loads step 1's healed weights


@pytest.fixture(scope="module")
def healed(finished, tiny_llama, tiny_data) -> Finished:
    root = finished.root / "heal"
    root.mkdir()
    return run_to_the_end(tiny_flags(tiny_llama, tiny_data, heal=2, heal_batch_size=2), root / "finished",
                          finished.env, root)


@pytest.fixture(scope="module")
def heal_kills(healed) -> dict[int, Killed]:
    return kill_each(healed, HEAL_KILL_SEEDS)


@pytest.mark.parametrize("seed", HEAL_KILL_SEEDS)
def test_a_healing_run_killed_9_resumes_to_the_uninterrupted_result_and_weights(healed, heal_kills, seed):
    k = heal_kills[seed]
    assert k.restarted is None and k.resumed.returncode == 0, f"{k.state}\n{k.resumed}"
    assert_same_results(k.out, healed.path, f"after a kill -9 ({k.state})")
    assert files_below(k.out / "healed") == files_below(healed.path / "healed"), f"healed weights differ ({k.state})"
    assert list(files_below(healed.path / "healed")) == [f"step-{STEPS}/model.safetensors"]


def test_damaged_healed_weights_are_refused_on_resume(healed, tmp_path):
    run = copy_folder(healed.path, tmp_path / "run")
    cut(run / "healed" / f"step-{STEPS}" / "model.safetensors")
    before = snapshot(run)
    assert_one_line(in_process(["run", "--resume", "--output", run, "--quiet"]),
                    f"healed/step-{STEPS}/model.safetensors", "differs from what step 3 committed")
    assert snapshot(run) == before
