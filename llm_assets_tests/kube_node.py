"""A one-node Kubernetes for tests: the core/v1 pod API on 127.0.0.1, whose 'kubelet' runs each pod's container
command as a local process with the pod's environment (``secretKeyRef``s resolved from its own Secrets).

It serves what ``PipesK8sClient`` uses (create a pod, list it by name, follow its log with timestamps, delete it),
so a worker launched through it really receives its Pipes context and really reports back through its log.
Images and resources are not emulated, and a volume is a directory of the node that the pod's environment
variables pointing into its mount path are rewritten to; the pod spec itself is checked by test_launch_k8s.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


class Pod:
    def __init__(self, body: dict, secrets: dict[str, dict[str, str]], workdir: Path):
        self.body = body
        container = body["spec"]["containers"][0]
        env = {"PATH": os.environ["PATH"], "HOME": str(workdir)}
        mounts = {m["mountPath"]: str(workdir / "volumes" / m["name"]) for m in container.get("volumeMounts", [])}
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            value = secrets[ref["name"]][ref["key"]] if ref else var["value"]
            for mount, local in mounts.items():  # a volume is a directory of this node's
                if value == mount or value.startswith(mount + "/"):
                    value = local + value[len(mount):]
                    Path(local).mkdir(parents=True, exist_ok=True)
            env[var["name"]] = value
        self.lines: list[tuple[str, str]] = []
        self.exit_code: int | None = None  # set once the process ended and all its output was read
        self.changed = threading.Condition()
        self.started = stamp(datetime.now(timezone.utc))
        self.process = subprocess.Popen(container["command"], env=env, cwd=workdir, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        last = datetime.now(timezone.utc)
        for line in self.process.stdout:
            now = max(datetime.now(timezone.utc), last + timedelta(microseconds=1))  # a kubelet's stamps are distinct
            last = now
            with self.changed:
                self.lines.append((stamp(now), line.rstrip("\n")))
                self.changed.notify_all()
        code = self.process.wait()
        with self.changed:
            self.exit_code = code
            self.changed.notify_all()

    def as_api(self) -> dict:
        container = self.body["spec"]["containers"][0]
        rc = self.exit_code
        state = ({"running": {"startedAt": self.started}} if rc is None else
                 {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error", "startedAt": self.started,
                                 "finishedAt": stamp(datetime.now(timezone.utc))}})
        status = {"phase": "Running" if rc is None else "Succeeded" if rc == 0 else "Failed",
                  "containerStatuses": [{"name": container["name"], "ready": rc is None, "restartCount": 0,
                                         "image": container["image"], "imageID": "", "state": state}]}
        return {**self.body, "status": status}


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeNode:
    def __init__(self, workdir: Path, secrets: dict[str, dict[str, str]]):
        self.workdir, self.secrets, self.pods = workdir, secrets, {}
        self.created: list[tuple[str, dict]] = []  # (namespace, pod body) of every pod, as the API received it
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.created.append((self.path.strip("/").split("/")[3], body))
                name = body["metadata"]["name"]
                workdir = node.workdir / name
                workdir.mkdir(parents=True)
                node.pods[name] = Pod(body, node.secrets, workdir)
                self._json(201, body)

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")  # api v1 namespaces NS pods [NAME [log]]
                if parts[-1] == "pods":
                    name = query.get("fieldSelector", "").removeprefix("metadata.name=")
                    items = [node.pods[name].as_api()] if name in node.pods else []
                    return self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                if parts[-1] == "log":
                    return self._log(node.pods[parts[-2]], query)
                self._json(404, {"kind": "Status", "code": 404})

            def _log(self, pod: Pod, query: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with_stamps, sent = query.get("timestamps", "").lower() == "true", 0
                if query.get("follow", "").lower() != "true":  # the Python client sends "True"
                    lines = pod.lines[-int(query.get("tailLines", len(pod.lines) or 1)):]
                    self.wfile.write("".join(f"{t} {s}\n" if with_stamps else f"{s}\n" for t, s in lines).encode())
                    return
                while True:
                    with pod.changed:
                        pod.changed.wait_for(lambda: len(pod.lines) > sent or pod.exit_code is not None, timeout=1)
                        lines, finished = pod.lines[sent:], pod.exit_code is not None
                    for t, s in lines:
                        self.wfile.write(f"{t} {s}\n".encode() if with_stamps else f"{s}\n".encode())
                    self.wfile.flush()
                    sent += len(lines)
                    if finished and sent == len(pod.lines):
                        return

            def do_DELETE(self):
                pod = node.pods.pop(self.path.strip("/").split("/")[-1])
                if pod.process.poll() is None:
                    pod.process.kill()
                self._json(200, pod.as_api())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "node",
            "clusters": [{"name": "node", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {}}],
            "contexts": [{"name": "node", "context": {"cluster": "node", "user": "test", "namespace": "default"}}]}))
        return path

    def stop(self) -> None:
        self.server.shutdown()
        for pod in self.pods.values():
            if pod.process.poll() is None:
                pod.process.kill()
