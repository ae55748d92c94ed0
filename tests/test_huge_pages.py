"""`python -m lm.<command>` re-executes itself once with glibc's huge-page tunable set (lm/cli/huge_pages.py);
importing lm does no such thing, nor anything else to the process."""

import subprocess
import sys

from conftest import ROOT, USER_ENV

from lm.cli import huge_pages

# A config file that prints the environment its command runs in, then ends the command.
REPORTING_CONFIG = """
import os
def get_config():
    print("GLIBC_TUNABLES=" + os.environ.get("GLIBC_TUNABLES", ""), flush=True)
    raise SystemExit(0)
"""


def _tunables_seen(tmp_path, module: str, tunables: str | None) -> str:
    (tmp_path / "report.py").write_text(REPORTING_CONFIG)
    env = {k: v for k, v in USER_ENV.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    result = subprocess.run([sys.executable, "-m", module, "--config", str(tmp_path / "report.py"),
                             "--workdir", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].removeprefix("GLIBC_TUNABLES=")


def test_commands_run_with_the_tunable_added_to_the_users_and_an_explicit_setting_is_kept(tmp_path):
    other = "glibc.malloc.trim_threshold=134217728"
    expected = f"{other}:glibc.malloc.hugetlb=1" if huge_pages.supported() else other
    assert _tunables_seen(tmp_path, "lm.train", other) == expected
    assert huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}  # an opt-out is kept, so no re-execution


IMPORT_EVERYTHING = """
import os, signal
print("started", flush=True)
before = signal.getsignal(signal.SIGINT)
import lm, lm.train.loop, lm.sample.generate, lm.evaluate.scoring, lm.convert.gpt2, lm.bench.step
import lm.sweep.experiment, lm.plot.figure
print("tunables", repr(os.environ.get("GLIBC_TUNABLES", "")), "handler kept", signal.getsignal(signal.SIGINT) is before)
"""


def test_importing_lm_changes_nothing_in_the_process():
    """Importing the library, every command's module included, neither re-executes the process (it starts once,
    with the environment as it was) nor takes over Ctrl-C."""
    env = {k: v for k, v in USER_ENV.items() if k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["started", "tunables '' handler kept True"], result.stdout
