"""The BIRD adapter: render ``bird.conf``, check it, install it, reload BIRD.

:func:`render_bird_conf` turns a :class:`~flock.core.birdview.BirdView` into text through the
jinja2 templates in ``bird/``. :class:`BirdControl` makes the running BIRD use that text:

1. text equal to the last applied one (or, before the first apply, to the file already
   on disk, so a restarted agent adopts a running BIRD): nothing happens;
2. ``bird -p -c <candidate>`` checks a candidate file written next to ``config_path``
   (mode 0600, or the live file's owner and group bits: bird.conf may hold TCP-MD5
   passwords); a rejection leaves ``config_path`` and BIRD untouched;
3. the candidate replaces ``config_path`` atomically (fsync, rename, fsync of the dir:
   :mod:`flock.adapters.files`);
4. ``birdc -v -s <socket> configure "<config_path>"``; the reply codes decide (birdc's
   exit status and English text are not reliable, see :func:`parse_reply`). A refusal
   puts the previous file back.

Facts this relies on, measured with BIRD 2.0.12:

- ``bird -p -c FILE`` parses without touching a running daemon; it exits 0 silently when
  the file is valid, 1 with ``bird: FILE:LINE:COL message`` on stderr when not.
- ``birdc -v`` prefixes each reply line with a 4-digit code (``dddd-`` continues,
  ``dddd `` ends the reply); ``configure`` answers ``0001`` (welcome), ``0002-Reading
  configuration from FILE``, then ``0003 Reconfigured`` or ``0004 Reconfiguration in
  progress`` (protocols still shutting down; BIRD finishes alone), or ``8002 FILE:L:C
  error`` for a file BIRD refuses (and keeps running its previous config).
- With no daemon on the socket birdc prints "Unable to connect to server control socket"
  and no code at all, at once.
- birdc and ``bird -p`` talk to a unix socket / read files only: neither needs to run
  inside the node's network namespace.

A BIRD that could not be reached still gets the new file: it reads ``config_path``
whenever it starts (it must be started with ``-c`` that same path), and the next
:meth:`BirdControl.apply` runs ``configure`` again even for unchanged text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import pathlib
import re

import jinja2

from flock.adapters import files
from flock.core.birdview import BirdView
from flock.errors import BirdConfigRejected, BirdError, BirdUnavailable


def _template_dir() -> pathlib.Path:
    # Installed: the templates ship as flock/birdtemplates (see pyproject.toml).
    # From a checkout (editable install, tests): the repository's top-level bird/.
    package = pathlib.Path(__file__).resolve().parents[1]  # src/flock (this file: src/flock/adapters/bird.py)
    installed = package / "birdtemplates"
    return installed if installed.is_dir() else package.parents[1] / "bird"


TEMPLATE_DIR = _template_dir()
"""flock's own templates (the repository's top-level ``bird/``)."""
DEFAULT_TEMPLATE = TEMPLATE_DIR / "bird.conf.j2"

NEW_CONFIG_MODE = 0o600
"""Mode of a new bird.conf (and of every candidate before it exists): it may hold passwords."""
CONFIG_MODE_MASK = 0o660
"""What a rewrite keeps of a live bird.conf's mode: its owner's and group's read and write."""

# Final reply codes of `configure` that mean the new file is (or will be) running:
# 0003 Reconfigured, 0004 Reconfiguration in progress, 0005 ... already in progress,
# queueing (BIRD applies the queued config when the current reconfiguration ends).
_CONFIGURE_OK = frozenset({3, 4, 5})
_SHUTTING_DOWN = 6  # 0006 Reconfiguration ignored, shutting down
_WELCOME = 1
_REPLY_LINE = re.compile(r"^(\d{4})([ -])(.*)$")


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _environment(template_dir: pathlib.Path) -> jinja2.Environment:
    # A user's template directory comes first; flock's own includes stay reachable
    # behind it, so a replacement bird.conf.j2 can still include "_peers.j2".
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(template_dir)]
    if template_dir != TEMPLATE_DIR:
        loaders.append(jinja2.FileSystemLoader(TEMPLATE_DIR))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # BIRD config, not HTML
    )


def render_bird_conf(view: BirdView, template: pathlib.Path | None = None) -> str:
    """Render ``bird.conf`` for ``view`` with ``template`` (default: flock's ``bird.conf.j2``).

    The template sees the view's fields as top-level names (``peers``, ``anycast_v4`` ...).
    Raises BirdConfigRejected when the template is missing, malformed or uses a name the
    view does not have (StrictUndefined): nothing is produced, the live config stays.
    """
    path = (template or DEFAULT_TEMPLATE).resolve()
    context = {field.name: getattr(view, field.name) for field in dataclasses.fields(view)}
    try:
        text = _environment(path.parent).get_template(path.name).render(context)
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        raise BirdConfigRejected(
            f"render bird.conf from {path}{where}: {type(exc).__name__}: {exc}") from exc
    return text.rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# Reply codes
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplyLine:
    """One line of a ``birdc -v`` reply: ``8002 bird.conf:3:51 syntax error``."""

    code: int
    text: str
    final: bool  # "dddd " ends a reply, "dddd-" continues it

    def __str__(self) -> str:
        return f"{self.code:04d} {self.text}"


def parse_reply(output: str) -> list[ReplyLine]:
    """The coded lines of ``birdc -v`` output (continuation and other lines are skipped).

    Codes (BIRD's doc/reply_codes): 0xxx success, 1xxx table entry, 2xxx table heading,
    8xxx run-time error, 9xxx parse error of the command itself.
    """
    lines = []
    for raw in output.splitlines():
        match = _REPLY_LINE.match(raw)
        if match:
            lines.append(ReplyLine(int(match[1]), match[3].strip(), match[2] == " "))
    return lines


# ---------------------------------------------------------------------------
# BirdControl
# ---------------------------------------------------------------------------


class BirdControl:
    """Drives one running BIRD through its config file and control socket.

    ``timeout`` (seconds) bounds every ``bird -p`` and ``birdc`` call; a call that
    overruns is killed. ``bird`` and ``birdc`` name the executables. Calls to
    :meth:`apply` are serialized.
    """

    def __init__(
        self,
        *,
        config_path: pathlib.Path,
        socket: pathlib.Path,
        timeout: float,
        bird: str = "bird",
        birdc: str = "birdc",
    ) -> None:
        if '"' in str(config_path) or "\n" in str(config_path):
            # birdc's `configure "FILE"` has no escapes.
            raise ValueError(f"BIRD config path cannot contain a quote or newline: {config_path!r}")
        self.config_path = config_path.absolute()
        self.socket = socket
        self.timeout = timeout
        self._bird = bird
        self._birdc = birdc
        self._lock = asyncio.Lock()
        self._adopted = False
        self._applied: str | None = None  # what BIRD runs, as far as flock knows

    def live_text(self) -> str | None:
        """The current content of ``config_path``; None if there is no such file.

        Raises BirdError if the file exists but cannot be read.
        """
        try:
            return self.config_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BirdError(f"read {self.config_path}: {exc.strerror}") from exc

    async def apply(self, text: str) -> bool:
        """Make BIRD run ``text``. True if BIRD was reconfigured, False if nothing changed.

        Raises BirdConfigRejected when ``bird -p`` or BIRD's ``configure`` refuses the text
        (``config_path`` then holds the previous content, BIRD runs the previous config),
        BirdUnavailable when the control socket does not answer within ``timeout``
        (``config_path`` already holds ``text``), BirdError when files cannot be written.
        """
        async with self._lock:
            if not self._adopted:
                self._applied = await asyncio.to_thread(self.live_text)
                self._adopted = True
            if text == self._applied:
                return False

            previous = await asyncio.to_thread(self.live_text)
            confirmed = self._applied
            candidate = await asyncio.to_thread(self._write_candidate, text)
            try:
                await self._check(candidate)
                # From here until BIRD answers, what it runs is unknown: an interrupted
                # apply (BirdUnavailable, cancellation) makes the next one configure
                # again, whatever its text. BIRD reads the file anyway when it starts.
                self._applied = None
                await asyncio.to_thread(self._install, candidate)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()

            try:
                await self._configure()
            except BirdUnavailable:
                raise
            except BirdError:
                await asyncio.to_thread(self._restore, previous)
                self._applied = confirmed
                raise
            self._applied = text
            return True

    async def bfd_sessions(self) -> dict[str, str]:
        """{neighbour address: BFD state (Up, Down, Init, AdminDown)} from ``birdc show bfd
        sessions``. Raises BirdUnavailable when BIRD does not answer."""
        what = f"birdc -s {self.socket} show bfd sessions"
        code, out, err = await self._run(self._birdc, "-s", str(self.socket), "show", "bfd", "sessions",
                                         what=what, unavailable=True)
        if code != 0:
            raise BirdUnavailable(f"{what}: {err.strip() or out.strip() or f'exit status {code}'}")
        return dict(re.findall(r"^(\S+)\s+\S+\s+(Up|Down|Init|AdminDown)\b", out, flags=re.MULTILINE))

    # -- steps -------------------------------------------------------------

    async def _check(self, candidate: pathlib.Path) -> None:
        code, out, err = await self._run(self._bird, "-p", "-c", str(candidate),
                                         what=f"check {self.config_path} with bird -p")
        if code != 0:
            detail = (err.strip() or out.strip() or f"exit status {code}").removeprefix("bird: ")
            # "bird: /etc/bird/.bird.conf.x1y2.tmp:62:25 syntax error, ..." names a
            # candidate file that is gone by now: keep the position and the message.
            detail = re.sub(rf"^{re.escape(str(candidate))}:(\d+):(\d+):? ",
                            r"line \1 column \2: ", detail)
            raise BirdConfigRejected(
                f"bird -p rejected the new {self.config_path} (the previous one stays): {detail}")

    async def _configure(self) -> None:
        what = f"birdc -s {self.socket} configure"
        code, out, err = await self._run(
            self._birdc, "-v", "-s", str(self.socket), "configure", f'"{self.config_path}"',
            what=what, unavailable=True)
        lines = parse_reply(out)
        if not any(line.code == _WELCOME for line in lines):
            detail = (err.strip() or out.strip() or f"exit status {code}")
            raise BirdUnavailable(f"{what}: BIRD did not answer: {detail}")
        errors = [line for line in lines if line.code >= 8000]
        if errors:
            raise BirdConfigRejected(
                f"{what}: BIRD refused {self.config_path}, the previous config stays: "
                + "; ".join(map(str, errors)))
        final = next((line for line in reversed(lines) if line.final), None)
        if final is not None and final.code in _CONFIGURE_OK:
            return
        if final is not None and final.code == _SHUTTING_DOWN:
            raise BirdUnavailable(f"{what}: BIRD is shutting down: {final}")
        raise BirdConfigRejected(f"{what}: unexpected reply: {out.strip()!r}")

    async def _run(self, *argv: str, what: str, unavailable: bool = False) -> tuple[int, str, str]:
        """Run argv within the timeout; on overrun kill it, raise BirdUnavailable or BirdError."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise BirdError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            error = BirdUnavailable if unavailable else BirdError
            raise error(f"{what}: no answer within {self.timeout:g} s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return (proc.returncode if proc.returncode is not None else -1,
                out.decode(errors="replace"), err.decode(errors="replace"))

    # -- files (run on a worker thread) ------------------------------------

    def _write_candidate(self, text: str) -> pathlib.Path:
        """Write ``text`` to a new file next to ``config_path``, fsynced: mode 0600 for a new
        file; a live file's owner, group and their read/write bits are kept (never others').

        Same directory: the rename is atomic, and relative ``include``s resolve alike.
        """
        # bird.conf may hold TCP-MD5 passwords: nobody but BIRD's user (and group) reads it.
        # BIRD often runs as its own user or group (Debian: root:bird 0640), so a live
        # file's owner and group, and their bits, stay as they are.
        try:
            stat = os.stat(self.config_path)
            mode, owner = stat.st_mode & CONFIG_MODE_MASK, (stat.st_uid, stat.st_gid)
        except FileNotFoundError:
            mode, owner = NEW_CONFIG_MODE, None
        except OSError as exc:
            raise BirdError(f"write a new {self.config_path}: {exc.strerror}") from exc
        try:
            return files.write_temporary(self.config_path, text.encode(), mode, owner=owner)
        except OSError as exc:
            raise BirdError(f"write a new {self.config_path}: {exc.strerror}") from exc

    def _install(self, candidate: pathlib.Path) -> None:
        try:
            files.install(candidate, self.config_path)
        except OSError as exc:
            raise BirdError(f"install {self.config_path}: {exc.strerror}") from exc

    def _restore(self, previous: str | None) -> None:
        if previous is None:
            self.config_path.unlink(missing_ok=True)
            return
        self._install(self._write_candidate(previous))
