"""`launch ui`: the standard library's ThreadingHTTPServer, one static page and a JSON API over the
same recipe loader, planner and run files as the CLI. No logic of its own: a refusal here is the
CLI's refusal, a plan is `launch plan`'s text, a run is `launch RECIPE` in a child process.

The standard library (not FastAPI, not Gradio): nothing to install, no CDN, starts at once, and the
page is a few hundred lines of plain JS. Training never runs in this process, so the page stays
responsive. Relative paths in a recipe resolve against the current folder: `launch ui` works in
the root folder, as the child `launch` does.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from launcher.errors import LauncherError, UIError
from launcher.recipe.load import load_recipe, output_folder
from launcher.recipe.schema import json_schema
from launcher.ui import tools
from launcher.ui.form import form_values, only_for, refusal
from launcher.ui.jobs import RECIPES, JobRefused, Jobs, recipe_path, resume_args
from launcher.ui.relay import Task, ToolFailed
from launcher.ui.runs import PathRefused, list_runs, run_detail

COOKIE = "launch_ui_token"
MAX_BODY = 1 << 20  # a recipe is a few KiB


class Refusal(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class FieldRefusal(Exception):
    """The loader's refusal of the form's recipe, with the key it names (refusal())."""

    def __init__(self, answer: dict):
        super().__init__(answer["error"])
        self.answer = answer


class App:
    """What the handlers share: the root folder, the token, the runs this page started."""

    def __init__(self, root: Path, token: str | None):
        self.root = root.resolve()
        self.token = token
        self.jobs = Jobs(self.root)

    def recipe(self, body: dict) -> tuple[Any, Path]:
        """The body's recipe loaded as `launch recipes/NAME.yaml` would load it (nothing written)."""
        name, text = str(body.get("name") or "recipe"), body.get("yaml")
        if not isinstance(text, str):
            raise Refusal(HTTPStatus.BAD_REQUEST, 'the body needs "yaml": the recipe\'s text')
        path = recipe_path(self.root, name)
        shown = Path(RECIPES) / path.name  # as the CLI names it, typed in the root folder
        try:
            return load_recipe(shown, text=text), path
        except LauncherError as err:
            raise FieldRefusal(refusal(str(err), text, str(shown))) from None

    def parse(self, body: dict) -> dict:
        """A recipe file's text as the form's values (Load)."""
        return {"ok": True, "values": form_values(str(body.get("yaml") or ""), str(body.get("file") or "recipe"))}

    def validate(self, body: dict) -> dict:
        recipe, _ = self.recipe(body)
        return {"ok": True, "recipe": recipe}

    def plan(self, body: dict) -> dict:
        from launcher.plan import build_plan, format_plan

        recipe, path = self.recipe(body)
        plan = build_plan(recipe, recipe_file=str(path), allow_pending=True)
        return {"ok": True, "text": format_plan(plan), "plan": plan}

    def start(self, body: dict) -> dict:
        recipe, _ = self.recipe(body)  # refused here, before a file is written or a process starts
        command = self.jobs.start(str(body["name"]), body["yaml"])
        folder = (self.root / output_folder(recipe)).resolve()  # a relative output.dir: under the root, the child's cwd
        run = folder.relative_to(self.root).as_posix() if folder.is_relative_to(self.root) else None
        return {"ok": True, "command": command, "run": run}

    def save(self, body: dict) -> dict:
        self.recipe(body)
        return {"ok": True, "path": str(self.jobs.save(str(body["name"]), body["yaml"]).relative_to(self.root))}

    def preview(self, body: dict) -> dict:
        """`launch data --preview N`'s report: the first rows tokenized, the trained part in brackets."""
        from launcher.data.preview import preview

        recipe, _ = self.recipe(body)
        rows = body.get("rows", 3)
        if not isinstance(rows, int) or not 1 <= rows <= 50:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"rows: {rows!r}. Fix: a whole number from 1 to 50")
        return {"ok": True, "text": preview(recipe, rows, None)}

    def resume(self, body: dict) -> dict:
        """A stopped or failed run's recipe started again with train.resume=auto on its folder."""
        run = str(body.get("run") or "")
        name, args = resume_args(self.root, run)
        return {"ok": True, "command": self.jobs.resume(name, args), "run": run}

    def stop(self, body: dict) -> dict:
        return {"ok": True, "pid": self.jobs.stop(str(body.get("name")))}


def _page() -> bytes:
    return files("launcher.ui").joinpath("page.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass make_server builds
    server_version = "launch-ui"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a request line per poll would bury the console; errors come back as JSON

    def _authorized(self, query: dict) -> bool:
        token = self.app.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        offered = [
            header.removeprefix("Bearer ").strip(),
            cookie[COOKIE].value if COOKIE in cookie else "",
            query.get("token", [""])[0],
        ]
        return any(o and hmac.compare_digest(o.encode(), token.encode()) for o in offered)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cookie: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if cookie:
            self.send_header("Set-Cookie", f"{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, value: Any) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json")

    def _stream(self, task: Task) -> None:
        """`"stream": true`: one JSON line per change of the children's output so far, `{"partial": {field: text}}`,
        then the answer as without it (`{"ok": false, "error"}` when a child failed). The body ends when the
        connection closes (HTTP/1.0: no length needed)."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            for partial in task.updates():
                self._line({"partial": partial})
            try:
                answer = task.answer()
            except ToolFailed as err:
                answer = {"ok": False, "error": str(err)}
            self._line(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away; the children finish on their own (a merge is not cut halfway)

    def _line(self, value: dict) -> None:
        self.wfile.write(json.dumps(value, ensure_ascii=False).encode() + b"\n")
        self.wfile.flush()

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes; at most {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as err:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise Refusal(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _answer(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorized(query):
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "a token is needed. Fix: open the URL `launch ui` printed"})
            return
        try:
            if method == "GET" and url.path == "/":
                self._send(HTTPStatus.OK, _page(), "text/html; charset=utf-8", cookie=self.app.token)
                return
            answer = self._route(method, unquote(url.path))
            if isinstance(answer, Task):
                self._stream(answer)
            else:
                self._json(HTTPStatus.OK, answer)
        except Refusal as err:
            self._json(err.status, {"error": str(err)})
        except PathRefused as err:
            self._json(HTTPStatus.FORBIDDEN, {"error": str(err)})
        except FileNotFoundError as err:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(err)})
        except FieldRefusal as err:
            self._json(HTTPStatus.BAD_REQUEST, err.answer)
        except (LauncherError, JobRefused, ToolFailed) as err:  # the CLI's own refusal, word for word
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})

    def _route(self, method: str, path: str) -> Any:
        app = self.app
        if method == "GET":
            if path == "/api/schema":
                return json_schema()
            if path == "/api/form":
                return {"only_for": only_for()}
            if path == "/api/runs":
                return {"runs": list_runs(app.root), "jobs": app.jobs.listing()}
            if path.startswith("/api/runs/") and path.endswith("/log"):
                return run_detail(app.root, path.removeprefix("/api/runs/").removesuffix("/log"))
        posts = {
            "/api/validate": app.validate,
            "/api/parse": app.parse,
            "/api/save": app.save,
            "/api/preview": app.preview,
            "/api/plan": app.plan,
            "/api/start": app.start,
            "/api/stop": app.stop,
            "/api/resume": app.resume,
            "/api/chat": lambda body: tools.chat(app.root, body),
            "/api/merge": lambda body: tools.merge(app.root, body),
            "/api/consolidate": lambda body: tools.consolidate(app.root, body),
            "/api/eval": lambda body: tools.evaluate(app.root, body),
        }
        if method == "POST" and path in posts:
            body = self._body()
            answer = posts[path](body)
            return answer.answer() if isinstance(answer, Task) and not body.get("stream") else answer
        raise Refusal(HTTPStatus.NOT_FOUND, f"{method} {path}: no such endpoint")

    def do_GET(self) -> None:  # http.server dispatches on these names
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


def make_server(root: Path, host: str, port: int, token: str | None) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": App(root, token)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def check_arguments(host: str, port: int, root: Path, token: str | None) -> None:
    """Refuse, before binding, a page others could reach without a token, a root that is not a
    folder, or a port nobody can listen on."""
    from launcher.util.net import is_loopback, port_taken

    if not is_loopback(host) and not token:
        raise UIError(
            f"--host {host}: other machines could start runs and read files under the root without a token. "
            "Fix: add --token SECRET (every request then needs it), or leave --host at 127.0.0.1"
        )
    if not root.is_dir():
        raise UIError(f"--root {root}: not a folder. Fix: an existing folder for recipes and runs, e.g. --root .")
    why = port_taken(port, host) if 1 <= port <= 65535 else "not a TCP port"
    if why:
        raise UIError(f"--host {host} --port {port}: cannot listen there ({why}). Fix: another port, e.g. --port 7861")
