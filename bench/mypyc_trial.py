"""Issue 14's mypyc trial: a scratch copy of this tree with the lone-event path's modules
compiled to C extensions by mypyc, to measure against the interpreted tree.

    python -m bench.mypyc_trial /tmp/h416/tree [--jsonl] [--module server/actor.py ...]

Exports HEAD (``git archive``: committed files only) to the scratch folder, writes a
``<scratch>.shim/sitecustomize.py`` that maps ``bamboo_session`` there (as a worktree's
shim does), lays the package out as pyproject's package-dir does (``build/pkg``: the
root's modules copied, protocol/persistence/server symlinked) and compiles the modules
with ``mypycify`` under the project's mypy config, in one group whose shared library
lands in ``server/`` (``compiled__mypyc``), so that bench/compare.py's ``before`` copy,
which symlinks server/, finds it. Each ``.so`` sits beside its ``.py``: delete the .so
and the module runs interpreted again. Then it byte-compiles the tree, as the benches
expect. Which modules to compile, and why the others are left out: bench/RESULTS.md
(issue 14, forty-eighth round).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = "bamboo_session.server.compiled"  # its library: server/compiled__mypyc.*.so

# The lone event's path (bench/bytecode_count.py --durability memory and fsync) that
# mypyc compiles and the slice of the suite passes with (bench/RESULTS.md).
EVENT_PATH = (
    "server/actor.py",
    "server/flush.py",
    "server/inbox.py",
    "server/metrics.py",
    "server/limits.py",
    "server/readiness.py",
    "server/decode_charge.py",
    "server/timers.py",
    "persistence/clock.py",
    "persistence/keys.py",
    "protocol/ids.py",
)
# The JSONL store's on fsync's path, compiled beside EVENT_PATH with --jsonl.
JSONL_PATH = tuple(
    f"persistence/jsonl/{name}.py"
    for name in ("appends", "commits", "writer", "checkpointer", "record", "answers", "files")
)
# Left interpreted, and why (mypyc 2.4.1, CPython 3.11).
LEFT_OUT = {
    "server/commands.py": "refused: Append(Struct, _Request), a Python class on a native one",
    "server/connection.py": "refused: `del data` of an argument",
    "server/http_wire.py": "refused: multiple inheritance (websockets' connection and two mixins)",
    "server/writer_life.py": "refused: an `if TYPE_CHECKING:` block in a class body",
    "server/outbox.py": "refused (internal error): Outbox's attributes are declared on WriterLife",
    "server/whole_frames.py": "breaks: __class__ assignment to websockets' ServerProtocol",
    "server/arriving_frames.py": "breaks: native mixins of BambooConnection, layout conflict",
    "server/close_bound.py": "breaks: native mixins of BambooConnection, layout conflict",
    "server/sliced_reads.py": "breaks: native mixins of BambooConnection, layout conflict",
    "server/room.py": "breaks: SessionRoom is weakly referenced; native classes cannot be",
    "protocol/codec.py": "breaks: a bad request's error loses its request id",
    "protocol/events.py": "breaks: msgspec Struct class keywords (tag=) are dropped",
    "server/outbound.py": "not tried: msgspec Struct class keywords (gc=False), as above",
    "persistence/memory.py": "breaks: StoredEvent.event_json, annotated bytes, is a msgspec.Raw",
    "persistence/events.py": "breaks: stored_size(event_json: bytes) is given a msgspec.Raw",
    "persistence/feed.py": "not tried: Feed has an interpreted subclass (redis/live.py)",
    "persistence/jsonl/tasks.py": "refused by gcc: its attribute _thread is C's __thread",
    "persistence/jsonl/storage.py": "breaks: it takes JsonlQueries' functions as its own",
    "persistence/jsonl/queries.py": "breaks: its functions, compiled, refuse a JsonlStorage",
    "persistence/jsonl/syncer.py": "breaks: Path(__file__) is not the module's in a .so",
    "persistence/jsonl/wal.py": "breaks WAL replay: msgspec Struct keywords are dropped",
}

SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
group, *mypy_args = sys.argv[3:]  # the files, and mypy's flags
del sys.argv[3:]
setup(name="mypyc_trial", ext_modules=mypycify(mypy_args, group_name=group, opt_level="3"))
"""

SHIM = '''"""sitecustomize for the mypyc trial's scratch tree: import bamboo_session from ROOT."""
import importlib.machinery
import importlib.util
import sys

ROOT = "{root}"
MAPPING = {{
    "bamboo_session": ROOT + "/bamboo_session",
    "bamboo_session.persistence": ROOT + "/persistence",
    "bamboo_session.protocol": ROOT + "/protocol",
    "bamboo_session.server": ROOT + "/server",
}}


class _WorktreeFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in MAPPING:
            pkg = MAPPING[fullname]
            return importlib.util.spec_from_file_location(
                fullname, pkg + "/__init__.py", submodule_search_locations=[pkg]
            )
        parent = fullname.rpartition(".")[0]
        if parent in MAPPING:
            return importlib.machinery.PathFinder.find_spec(fullname, path=[MAPPING[parent]])
        return None


sys.meta_path.insert(0, _WorktreeFinder)
'''


def export(scratch: Path) -> None:
    """HEAD's files into ``scratch`` (which must not exist), and its shim beside it."""
    scratch.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
    shim = scratch.with_name(scratch.name + ".shim")
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM.format(root=scratch))
    (scratch / ".venv").symlink_to(ROOT / ".venv")
    for installed in ("bench/socketio/node_modules", "tests/js/node_modules"):  # not in git
        if (ROOT / installed).is_dir():
            (scratch / installed).symlink_to((ROOT / installed).resolve())


def package_layout(scratch: Path) -> Path:
    """``build/pkg/bamboo_session`` as pyproject's package-dir maps it; returns build/pkg."""
    pkg = scratch / "build" / "pkg"
    package = pkg / "bamboo_session"
    package.mkdir(parents=True)
    for module in (scratch / "bamboo_session").iterdir():
        if module.is_file():
            shutil.copy(module, package / module.name)
    for folder in ("protocol", "persistence", "server"):
        (package / folder).symlink_to(scratch / folder)
    return pkg


def compile_modules(scratch: Path, modules: list[str]) -> None:
    """``modules`` (paths as in the tree) compiled in place, then every module to bytecode."""
    pkg = package_layout(scratch)
    paths = [f"bamboo_session/{module}" for module in modules]
    config = ["--config-file", str(scratch / "pyproject.toml")]
    setup = [sys.executable, "-c", SETUP, "build_ext", "--inplace", GROUP, *config, *paths]
    subprocess.run(setup, cwd=pkg, check=True)
    trees = ("server", "protocol", "persistence", "bamboo_session", "bench")
    subprocess.run([sys.executable, "-m", "compileall", "-q", *trees], cwd=scratch, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scratch", type=Path, help="a folder that does not exist yet")
    parser.add_argument("--module", action="append", help="compile these (default: EVENT_PATH)")
    parser.add_argument("--jsonl", action="store_true", help="and JSONL_PATH")
    args = parser.parse_args()
    scratch = args.scratch.resolve()
    export(scratch)
    modules = args.module or list(EVENT_PATH)
    compile_modules(scratch, modules + list(JSONL_PATH) * args.jsonl)
    print(f"{scratch}: compiled; run it with PYTHONPATH={scratch}.shim")


if __name__ == "__main__":
    main()
