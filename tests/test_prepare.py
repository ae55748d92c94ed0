"""Preparation into token shards: the same bytes in parallel and after a SIGKILL, and one line for each way the
prepared data can be wrong (damaged, another tokenizer's, its files changed under a run)."""

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, TINY, USER_ENV, char_tokenizer, contents, one_line_error

from lm.data import corpus, documents, encoding, prepare, sources
from lm.data.config import DataConfig
from lm.data.shards import Split
from lm.errors import UserError
from lm.tokenizer import sentencepiece
from lm.train.loop import train

TEXT = open(sources.bundled_corpus(), encoding="utf-8").read()


def checksums(folder) -> dict[str, str]:
    """sha256 of every shard file and the manifest under `folder`, by relative path."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".npy") or name == prepare.MANIFEST:
                path = os.path.join(root, name)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_preparation_in_parallel_writes_what_one_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "UNIT_BYTES", 4096)  # many tasks from one small file
    (tmp_path / "c.txt").write_text(TEXT[:60_000])
    source = sources.FileSource((str(tmp_path / "c.txt"),), documents.Settings.of(DataConfig()))
    assert len(source.tasks()) > 10
    tok = sentencepiece.train([TEXT[:60_000]], "char", 256)
    one = prepare.prepare(source, tok, str(tmp_path / "one"), workers=1)
    two = prepare.prepare(source, tok, str(tmp_path / "two"), workers=2)
    assert one == two and checksums(tmp_path / "one") == checksums(tmp_path / "two")
    docs = [doc for task in source.tasks() for part in source.parts(task) for doc in part["train"]]
    assert one["splits"]["train"]["documents"] == len(docs) and len(docs) > 100


def test_a_preparation_killed_and_run_again_writes_the_same_shards(tmp_path, cache_dir):
    """SIGKILL to `lm.prepare` as it records task 30 finished (its shards written, its record not); the same
    command again, with 2 worker processes, finishes it, keeping the finished tasks and task 30's shards, and every
    shard and the manifest are those of a preparation never interrupted."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(300):  # a task per file
        (folder / f"{i:03d}.txt").write_text(TEXT[i * 3000:i * 3000 + 40_000])
    args = ["lm.prepare", "--config", TINY, f"--config.data.path={folder}", f"--config.data.cache_dir={cache_dir}",
            "--out"]
    whole = subprocess.run([sys.executable, "-m", *args, str(tmp_path / "whole"), "--workers", "2"], cwd=ROOT,
                           env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    record = killed / "tasks" / "00030.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "signal_at.py"), "KILL", f"commit:{record}",
                           *args, str(killed), "--workers", "1"], cwd=ROOT, env=USER_ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    names = sorted(os.listdir(killed / "tasks"))  # 30 records, and the one being written under a temporary name
    assert names[1:] == [f"{i:05d}.json" for i in range(30)] and re.fullmatch(r"\.00030\.json\.\w+\.tmp", names[0])
    assert (killed / "00030-0000").is_dir() and not (killed / prepare.MANIFEST).exists()
    again = subprocess.run([sys.executable, "-m", *args, str(killed), "--workers", "2"], cwd=ROOT, env=USER_ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "270 of 300 tasks to do" in again.stdout, again.stdout
    want = checksums(tmp_path / "whole")
    assert len(want) == 300 * 4 + 1 and checksums(killed) == want


def test_damaged_or_another_tokenizers_shards_are_one_line(tmp_path, cache_dir):
    (tmp_path / "c.txt").write_text(TEXT[:100_000])
    tok = char_tokenizer(cache_dir, path=str(tmp_path / "c.txt"))
    source = sources.FileSource((str(tmp_path / "c.txt"),), documents.Settings.of(DataConfig()))
    out = tmp_path / "prepared"
    prepare.prepare(source, tok, str(out), workers=1)
    d = DataConfig(path=str(out))

    def first_rows(tokenizer=tok):
        components, _, _ = corpus.open_data(d, tokenizer, 33)
        return components[0].rows.rows([0, 1])

    first_rows()
    other = sentencepiece.train(["a different text"], "char", 256)
    with pytest.raises(UserError, match=f"^{out} was prepared with another tokenizer than this run's; prepare"):
        first_rows(other)
    tokens = out / "00000-0000" / "train.tokens.npy"
    good = tokens.read_bytes()
    tokens.write_bytes(good[:-100])  # cut short
    with pytest.raises(UserError, match=f"^prepared shard file {tokens} is damaged"):
        first_rows()
    flipped = bytearray(good)
    flipped[-7] ^= 1  # one bit of one token
    tokens.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match=rf"^prepared shard file {tokens} is damaged \(its checksum is not the "):
        first_rows()
    tokens.write_bytes(good)
    np.testing.assert_array_equal(first_rows()["tokens"][0], Split(corpus.open_splits(
        corpus.resolve(d)[0], tok, d)["train"], 33, whole=True).rows([0])["tokens"][0])


def test_a_run_whose_files_changed_since_preparation_stops_and_resumes_once_they_are_back(tiny_config, tmp_path,
                                                                                         capsys):
    text = tmp_path / "c.txt"
    text.write_text(TEXT[:200_000])
    stat = os.stat(text)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.path = str(text)
    cfg.train.update(steps=2, eval_every=2, log_every=1)
    cfg.checkpoint.every = 2
    workdir = str(tmp_path / "run")  # one device: the data, not the mesh, is under test
    train(cfg, workdir, devices=jax.devices()[:1])
    text.write_text(TEXT[:200_000] + "\n\nOne more document.")
    cfg.train.steps = 4
    with pytest.raises(UserError, match=rf"^the data at {text} changed since this run's data was prepared from it "
                                        rf"\({text} changed \(size 200000 -> 200020 bytes"):
        train(cfg, workdir, devices=jax.devices()[:1])
    text.write_text(TEXT[:200_000])
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as it was
    capsys.readouterr()
    train(cfg, workdir, devices=jax.devices()[:1])
    out = capsys.readouterr().out  # from the step after the checkpoint (every step logged), none before it
    assert "resuming at step 2" in out and "step      3/4" in out and "step      4/4" in out, out
    assert "step      1/" not in out and "step      2/" not in out, out


def test_prepare_writes_only_into_an_empty_folder_or_its_own_and_never_deletes_or_writes_through_a_users_file(
        tmp_path, cache_dir):
    """`--out` a folder holding a user's notes and the corpus (once deleted whole when the corpus changed), the
    corpus folder itself, or a file: one line each, nothing written. A folder lm prepared into, in which a user
    then put a file and links (one at a name lm writes): after the corpus changes, preparing again rewrites lm's
    files only, and a link at the lock's name is refused; the user's file and the links' target are untouched."""
    mine = tmp_path / "mine"
    (mine / "raw").mkdir(parents=True)
    (mine / "raw" / "a.txt").write_text(TEXT[:60_000])
    (mine / "NOTES.md").write_text("my notes\n")

    def prepare_into(out):
        return subprocess.run([sys.executable, "-m", "lm.prepare", "--config", TINY, "--out", str(out), "--workers",
                               "1", f"--config.data.path={mine / 'raw'}", f"--config.data.cache_dir={cache_dir}"],
                              cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "NOTES.md").write_text("other notes\n")
    before = contents(tmp_path)
    for out in (mine, mine / "raw"):
        one_line_error(prepare_into(out), f"--out {out} holds the corpus itself", "a folder of its own")
    one_line_error(prepare_into(tmp_path / "notes"), "notes holds files lm did not write (NOTES.md)", "new or empty")
    one_line_error(prepare_into(mine / "NOTES.md"), "is a file, not a folder")
    assert contents(tmp_path) == before and sorted(os.listdir(mine)) == ["NOTES.md", "raw"]

    out, victim = tmp_path / "prepared", tmp_path / "victim.txt"
    assert prepare_into(out).returncode == 0
    victim.write_text("not lm's\n")
    (out / "NOTES.md").write_text("kept\n")
    (out / "mine").symlink_to(victim)
    os.remove(out / "tokenizer.json")
    (out / "tokenizer.json").symlink_to(victim)  # a name lm writes: replaced, never written through
    (mine / "raw" / "a.txt").write_text(TEXT[:50_000])  # the corpus changes
    again = prepare_into(out)
    assert again.returncode == 0 and "changed since" in again.stderr, again.stderr
    assert victim.read_text() == "not lm's\n" and (out / "NOTES.md").read_text() == "kept\n"
    assert os.readlink(out / "mine") == str(victim) and not os.path.islink(out / "tokenizer.json")
    assert set(json.loads((out / "tokenizer.json").read_text())) == {"type", "model"}  # the new corpus's tokenizer
    umask = os.umask(0)
    os.umask(umask)
    for path, mode in ((out / "tokenizer.json", 0o666), (out / "00000-0000", 0o777)):  # as open() and mkdir make them
        assert os.stat(path).st_mode & 0o777 == mode & ~umask, path
    os.remove(out / ".lock")
    (out / ".lock").symlink_to(victim)
    (mine / "raw" / "a.txt").write_text(TEXT[:40_000])
    one_line_error(prepare_into(out), f"{out / '.lock'} is a link", "remove it")
    assert victim.read_text() == "not lm's\n"


def test_a_full_disk_while_preparing_is_one_line_and_the_rerun_goes_on_to_the_same_shards(tmp_path, cache_dir):
    """A real full disk (a 400 KiB tmpfs in a private mount namespace) while 2 worker processes write shards: one
    line, exit status 2 (not a worker's traceback); with room again, the same command finishes the preparation,
    and its shards and manifest are those of one never interrupted."""
    folder, disk = tmp_path / "corpus", tmp_path / "disk"
    folder.mkdir()
    disk.mkdir()
    for i in range(2):  # two tasks, one per worker
        (folder / f"{i}.txt").write_text(TEXT[i * 500_000:(i + 1) * 500_000])
    command = " ".join([sys.executable, "-m", "lm.prepare", "--config", TINY, f"--config.data.path={folder}",
                        f"--config.data.cache_dir={cache_dir}", "--workers", "2", "--out"])
    script = tmp_path / "full_disk.sh"
    script.write_text(f"""set -u
cd {ROOT}
O={tmp_path}
mount -t tmpfs -o size=400k tmpfs {disk}
{command} {disk}/prepared > $O/out1 2> $O/err1; echo $? > $O/rc1
mount -o remount,size=16m {disk}
{command} {disk}/prepared > $O/out2 2> $O/err2; echo $? > $O/rc2
{command} {disk}/whole > $O/out3 2> $O/err3; echo $? > $O/rc3
cp -r {disk}/prepared {disk}/whole $O/
""")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script)], env=USER_ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = {i: {k: (tmp_path / f"{k}{i}").read_text() for k in ("rc", "err")} for i in (1, 2, 3)}
    assert out[1]["rc"].strip() == "2" and out[1]["err"].splitlines() == [
        f"error: the disk filled up while preparing {folder}/0.txt and 1 more file(s) into {disk}/prepared; free "
        "some space and rerun the same command (it goes on from the tasks done)"], out[1]["err"]
    for i in (2, 3):
        assert out[i]["rc"].strip() == "0", out[i]["err"]
    want = checksums(tmp_path / "whole")
    assert len(want) == 2 * 4 + 1 and checksums(tmp_path / "prepared") == want


def test_a_second_preparation_of_a_folder_says_that_it_waits_for_the_first(tmp_path, cache_dir):
    """While another process holds the folder's lock, `lm.prepare` says so (once) and waits; released, it goes on
    and prepares."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "a.txt").write_text(TEXT[:20_000])
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-m", "lm.prepare", "--config", TINY, "--out", str(out),
                                 f"--config.data.path={tmp_path / 'a.txt'}", f"--config.data.cache_dir={cache_dir}"],
                                cwd=ROOT, env=USER_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = proc.stderr.readline()  # the process blocks on the lock after this line
        assert said == f"waiting for another process preparing into {out} to finish\n", said + proc.stderr.read()
        assert proc.poll() is None
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and stderr == "" and "train and" in stdout, stderr
    assert (out / prepare.MANIFEST).is_file()


def test_lm_prepare_checks_the_shards_it_keeps_and_prepares_a_damaged_or_deleted_one_again(tmp_path, cache_dir):
    """A shard of a prepared folder with one flipped bit: a run on the folder stops with one line that says how
    to mend it; `lm.prepare` into the folder again (which once reported success without a look) finds it by its
    checksum and prepares it again, as it does a shard folder deleted; then the shards are those first written
    and the run trains."""
    (tmp_path / "a.txt").write_text(TEXT[:30_000])
    out = tmp_path / "prepared"

    def prepare_into():
        return subprocess.run([sys.executable, "-m", "lm.prepare", "--config", TINY, "--out", str(out),
                               f"--config.data.path={tmp_path / 'a.txt'}", f"--config.data.cache_dir={cache_dir}"],
                              cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)

    assert prepare_into().returncode == 0
    want = checksums(out)
    tokens = out / "00000-0000" / "train.tokens.npy"
    flipped = bytearray(tokens.read_bytes())
    flipped[-7] ^= 1
    tokens.write_bytes(bytes(flipped))
    train = [sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(tmp_path / "run"),
             f"--config.data.path={out}", "--config.train.steps=2", "--config.train.eval_every=1000"]
    one_line_error(subprocess.run(train, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300),
                   f"prepared shard file {tokens} is damaged (its checksum is not the manifest's); prepare the corpus "
                   "again with python -m lm.prepare, which checks every shard and redoes damaged ones")
    again = prepare_into()
    assert again.returncode == 0 and again.stderr.splitlines() == [
        f"warning: prepared shard 00000-0000/train.tokens.npy is not the bytes it was written with in {out}; "
        "preparing its part of the corpus again"], again.stderr
    assert checksums(out) == want
    shutil.rmtree(out / "00000-0000")
    again = prepare_into()
    assert again.returncode == 0 and again.stderr.splitlines() == [
        f"warning: prepared shard 00000-0000/train.tokens.npy: No such file or directory in {out}; preparing its "
        "part of the corpus again"], again.stderr
    assert checksums(out) == want
    trained = subprocess.run(train, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0 and "step      2/2" in trained.stdout, trained.stderr


def test_a_text_without_separators_is_cut_into_tasks_and_tokenized_in_pieces_of_bounded_size(tmp_path,
                                                                                               monkeypatch, cache_dir):
    """A file of one line (one document by the separator rule) was one task however long, tokenized whole: 37
    times its size in memory. It is cut into tasks of about UNIT_BYTES before a space, each task's text one
    document, nothing lost; a document longer than PIECE_CHARS is encoded in pieces cut before a space, with the
    ids of the whole (for the character tokenizer, exactly)."""
    monkeypatch.setattr(sources, "UNIT_BYTES", 4096)
    monkeypatch.setattr(encoding, "PIECE_CHARS", 1000)
    text = TEXT[:40_000].replace("\n", " ")
    path = tmp_path / "one_line.txt"
    path.write_text(text)
    source = sources.FileSource((str(path),), documents.Settings.of(DataConfig()))
    tasks = source.tasks()
    assert len(tasks) == 10 and all(4096 <= t.end - t.start <= 4096 + 20 for t in tasks[:-1]), tasks  # 40,000 B
    assert all(text[t.start] == " " for t in tasks[1:])  # each cut before a space
    read = [d for t in tasks for part in source.parts(t) for split in documents.SPLITS for _, d in part[split]]
    assert "".join(read) == text
    tok = char_tokenizer(cache_dir)
    out = tmp_path / "prepared"
    prepare.prepare(source, tok, str(out), workers=1)
    d = DataConfig(path=str(out))
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    got = [p.tokens()[a:b] for split in documents.SPLITS for p in pieces[split]
           for (a, _), b in zip(p.docs(), [*p.docs()[1:, 0], len(p.tokens())], strict=True)]
    want = [[tok.bos_id, *tok.encode(doc), tok.eos_id] for doc in read]
    assert sorted(map(list, got)) == sorted(want) and max(len(w) for w in want) > 1000


def test_the_cache_folder_keeps_a_users_files_and_refuses_links_at_the_names_lm_makes_there(tmp_path):
    """config.data.cache_dir holding a user's file and link: a run prepares its data and trains its tokenizer there
    and leaves both as they were. A link planted at the name of the data's prepared folder, or at `tokenizers`,
    would have lm write into what it points to: one line each, nothing written there; removed, the run trains."""
    cache, victim, elsewhere = tmp_path / "cache", tmp_path / "victim.txt", tmp_path / "elsewhere"
    cache.mkdir()
    elsewhere.mkdir()
    victim.write_text("not lm's\n")
    (cache / "NOTES.md").write_text("my notes\n")
    (cache / "mine").symlink_to(victim)
    (tmp_path / "a.txt").write_text(TEXT[:20_000])

    def train_in(name):
        return subprocess.run([sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(tmp_path / name),
                               f"--config.data.path={tmp_path / 'a.txt'}", f"--config.data.cache_dir={cache}",
                               "--config.train.steps=2", "--config.train.eval_every=1000"],
                              cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)

    assert train_in("first").returncode == 0
    assert (cache / "NOTES.md").read_text() == "my notes\n" and os.readlink(cache / "mine") == str(victim)
    (prepared,) = set(os.listdir(cache)) - {"NOTES.md", "mine", "tokenizers"}
    shutil.rmtree(cache / prepared)
    (cache / prepared).symlink_to(elsewhere)
    one_line_error(train_in("second"), f"{cache / prepared} is a link; lm does not write through links")
    os.remove(cache / prepared)
    shutil.rmtree(cache / "tokenizers")
    (cache / "tokenizers").symlink_to(elsewhere)
    one_line_error(train_in("third"), f"{cache / 'tokenizers'} is a link; lm does not write through links")
    assert os.listdir(elsewhere) == [] and victim.read_text() == "not lm's\n"
    os.remove(cache / "tokenizers")
    assert train_in("fourth").returncode == 0
    assert (cache / "NOTES.md").read_text() == "my notes\n" and os.readlink(cache / "mine") == str(victim)


def test_lm_prepare_into_a_read_only_folder_is_one_line_whether_new_or_its_own(tmp_path, cache_dir):
    """A read-only --out (a bind mount, in a private mount namespace): empty, or one lm prepared into before whose
    corpus has changed since: one line each, not EROFS tracebacks; writable again, the command prepares."""
    (tmp_path / "a.txt").write_text(TEXT[:20_000])
    command = " ".join([sys.executable, "-m", "lm.prepare", "--config", TINY, f"--config.data.path={tmp_path}/a.txt",
                        f"--config.data.cache_dir={cache_dir}", "--out"])
    new, own = tmp_path / "new", tmp_path / "own"
    new.mkdir()
    script = tmp_path / "read_only.sh"
    script.write_text(f"""set -u
cd {ROOT}
{command} {own} > /dev/null || exit 7
echo "{TEXT[20_000:20_100]!r}" >> {tmp_path}/a.txt
for out in {new} {own}; do
  mount --bind $out $out && mount -o remount,bind,ro $out
  {command} $out > /dev/null 2> $out.err; echo $? > $out.rc
  umount $out
  {command} $out > /dev/null 2> $out.err2; echo $? > $out.rc2
done
""")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script)], env=USER_ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for out in (new, own):
        assert (tmp_path / f"{out.name}.rc").read_text().strip() == "2"
        assert (tmp_path / f"{out.name}.err").read_text().splitlines() == [
            f"error: cannot write in {out} (Read-only file system); make it writable or use another --out"]
        assert (tmp_path / f"{out.name}.rc2").read_text().strip() == "0", (tmp_path / f"{out.name}.err2").read_text()
        assert (out / prepare.MANIFEST).is_file()
