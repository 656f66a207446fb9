"""A Pipes message reader that never loses a stage to a torn line.

Dagster's ``PipesTempFileMessageReader`` tails the messages file with ``readline``, which hands back a line the
worker has only partly written; ``json.loads`` then fails and the reader thread stops, dropping every later message
(seen once in ~30 runs as ``JSONDecodeError: Unterminated string``). This reader decodes a line only once its newline
has arrived, and skips (with one warning) a complete line that still is not a message, reading on. The stage's result
never depends on these messages anyway: the launcher reads what the worker committed to the store.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import PipesMessageReader
from dagster_pipes import PipesDefaultMessageWriter

POLL_SECONDS = 0.05


class WholeLineMessageReader(PipesMessageReader):
    def __init__(self, log: Any):
        self.log = log  # where a skipped line is reported (the step's logger)
        self.skipped = 0

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="llm-assets-pipes-") as tmp:
            path = os.path.join(tmp, "messages")
            open(path, "w").close()
            closed = threading.Event()
            thread = threading.Thread(target=self._read, args=(path, handler, closed), daemon=True)
            thread.start()
            try:
                yield {PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                       PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False}
            finally:
                closed.set()
                thread.join()

    def _read(self, path: str, handler, closed: threading.Event) -> None:
        pending = b""
        with open(path, "rb") as f:
            while True:
                done = closed.is_set()  # asked before reading: a read after the session closed sees every byte
                chunk = f.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._handle(line, handler)
                elif done:
                    break
                else:
                    closed.wait(POLL_SECONDS)
        if pending.strip():  # the writer ended without a final newline
            self._handle(pending, handler)

    def _handle(self, line: bytes, handler) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError as e:
            self.skipped += 1
            self.log.warning(f"[pipes] skipped a garbled message line ({e}): {line[:200]!r}")
            return
        try:
            handler.handle_message(message)
        except Exception as e:  # a message of the wrong shape: the same, it is only a log line or a report
            self.skipped += 1
            self.log.warning(f"[pipes] skipped a message Dagster could not handle ({type(e).__name__}: {e}): {line[:200]!r}")

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file (whole lines only)."
