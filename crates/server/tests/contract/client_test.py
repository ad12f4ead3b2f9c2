#!/usr/bin/env python3
"""Drive a live Campus server through a client generated from its own OpenAPI document.

Usage: python3 client_test.py BASE_URL TENANT_SLUG ADMIN_EMAIL ADMIN_PASSWORD

1. GET BASE_URL/api/v1/openapi.json
2. `python3 -m openapi_python_client generate` into a temporary directory
   (the package pinned in requirements.txt; runs offline)
3. import the generated package and, through its functions only:
   log in (X-Tenant as the generated `x_tenant` parameter), create a course,
   create a lesson, PUT a binary MP4 as the lesson's content, GET it back and
   compare the bytes, list the courses (following `next_cursor`).

Exit 0 when every step did what the contract says, 1 otherwise (with the
reason), 2 on bad usage.

openapi-python-client (0.29) only generates request bodies of JSON, form,
multipart and `application/octet-stream`; the file routes declare their real
media types (`video/mp4`, `application/pdf`, `image/*`, `application/x-tar`),
so without help it drops `PUT .../content` and `PUT .../avatar` entirely and
omits the file responses. The config below maps those types onto
octet-stream (the generator's documented `content_type_overrides`); the
generated function still sends the original media type as Content-Type.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import random
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from pathlib import Path

PACKAGE = "campus_client"

CONFIG = """\
project_name_override: campus-client
package_name_override: campus_client
content_type_overrides:
  video/mp4: application/octet-stream
  application/pdf: application/octet-stream
  image/png: application/octet-stream
  image/jpeg: application/octet-stream
  image/webp: application/octet-stream
  application/x-tar: application/octet-stream
"""


class Failure(Exception):
    pass


def step(message: str) -> None:
    print(f"-- {message}", flush=True)


def expect(response, status: int, what: str):
    """The generated `sync_detailed` answer must have `status`; returns `.parsed`."""
    if int(response.status_code) != status:
        body = response.content[:500].decode("utf-8", "replace")
        raise Failure(f"{what}: expected HTTP {status}, got {int(response.status_code)}: {body}")
    return response.parsed


def fetch_document(base_url: str) -> bytes:
    url = base_url.rstrip("/") + "/api/v1/openapi.json"
    step(f"GET {url}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            raw = r.read()
    except OSError as e:  # URLError, HTTPError, timeouts
        raise Failure(f"cannot fetch {url}: {e}") from e
    doc = json.loads(raw)
    print(f"   OpenAPI {doc.get('openapi')}, {len(doc.get('paths', {}))} paths")
    return raw


def generate(raw_doc: bytes, workdir: Path) -> None:
    doc_path = workdir / "openapi.json"
    doc_path.write_bytes(raw_doc)
    config_path = workdir / "config.yml"
    config_path.write_text(CONFIG)
    out = workdir / PACKAGE
    cmd = [
        sys.executable, "-m", "openapi_python_client", "generate",
        "--path", str(doc_path), "--meta", "none",
        "--output-path", str(out), "--config", str(config_path), "--overwrite",
    ]
    step("openapi-python-client generate (content_type_overrides: binary media types -> octet-stream)")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or not (out / "__init__.py").exists():
        raise Failure(f"generator failed (exit {proc.returncode}):\n{output}")
    # Each warning: a "WARNING ..." line, then its reason (JSON excerpts skipped).
    warnings = []
    for line in output.splitlines():
        if line.startswith("WARNING"):
            warnings.append([line])
        elif warnings and line.strip() and not line.startswith(("{", "}", " ", '"', "If you believe")):
            warnings[-1].append(line)
    print(f"   generated in {elapsed:.1f}s; {len(warnings)} generator warning(s)")
    for lines in warnings:
        print(f"   {lines[0]}")
        for reason in lines[1:]:
            print(f"       {reason}")


def module(name: str):
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ImportError as e:
        raise Failure(f"the generated client has no {name}: {e}") from e


def takes(fn, param: str, what: str) -> None:
    if param not in inspect.signature(fn).parameters:
        raise Failure(
            f"the generated {what} does not expose `{param}` as a parameter "
            f"(signature: {inspect.signature(fn)})"
        )


def mp4_bytes(size: int = 200_000) -> bytes:
    """An `ftyp` box, then every byte value and deterministic noise (spans several storage chunks)."""
    ftyp = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"
    rng = random.Random(20261202)
    noise = bytes(rng.getrandbits(8) for _ in range(size))
    return ftyp + bytes(range(256)) * 4 + b"\r\n\x00\x1a" + noise


def run(base_url: str, slug: str, email: str, password: str) -> None:
    raw = fetch_document(base_url)
    with tempfile.TemporaryDirectory(prefix="campus-client-") as tmp:
        workdir = Path(tmp)
        generate(raw, workdir)
        sys.path.insert(0, str(workdir))

        client_mod = module("client")
        types = module("types")
        models = module("models")
        login = module("api.auth.login")
        create_course = module("api.courses.create_course")
        list_courses = module("api.courses.list_courses")
        create_lesson = module("api.lessons.create_lesson")
        put_content = module("api.files.put_lesson_content")
        get_content = module("api.files.get_lesson_content")

        for fn, what in [
            (login.sync_detailed, "login"),
            (create_course.sync_detailed, "create_course"),
            (create_lesson.sync_detailed, "create_lesson"),
            (put_content.sync_detailed, "put_lesson_content"),
            (get_content.sync_detailed, "get_lesson_content"),
            (list_courses.sync_detailed, "list_courses"),
        ]:
            takes(fn, "x_tenant", what)
        takes(put_content.sync_detailed, "body", "put_lesson_content")
        print(f"   put_lesson_content.sync_detailed{inspect.signature(put_content.sync_detailed)}")

        base = base_url.rstrip("/")
        step(f"login as {email} (x_tenant={slug!r})")
        anon = client_mod.Client(base_url=base, raise_on_unexpected_status=False)
        for attempt in range(4):
            answer = login.sync_detailed(
                client=anon, body=models.LoginRequest(email=email, password=password), x_tenant=slug
            )
            # Logins from this address may be throttled (e.g. after a schemathesis run).
            if int(answer.status_code) != 429 or attempt == 3:
                break
            wait = int(answer.headers.get("retry-after", "5"))
            print(f"   429 rate_limited, retrying in {wait} s")
            time.sleep(wait)
        session = expect(answer, 200, "login")
        if not isinstance(session, models.LoginResponse) or session.token_type != "Bearer":
            raise Failure(f"login: unexpected body {session!r}")
        print(f"   token for user {session.user.id}, expires {session.expires_at.isoformat()}")
        api = client_mod.AuthenticatedClient(base_url=base, token=session.token, timeout=60.0)

        title = f"Contract test {uuid.uuid4().hex[:8]}"
        step(f"create course {title!r}")
        course = expect(
            create_course.sync_detailed(
                client=api,
                body=models.NewCourse(title=title, description="made by client_test.py", published=True),
                x_tenant=slug,
            ),
            201,
            "create course",
        )
        if not isinstance(course, models.Course) or course.title != title:
            raise Failure(f"create course: unexpected body {course!r}")
        print(f"   course {course.id}")

        step("create lesson")
        lesson = expect(
            create_lesson.sync_detailed(
                course.id, client=api, body=models.NewLesson(title="Binary content"), x_tenant=slug
            ),
            201,
            "create lesson",
        )
        if not isinstance(lesson, models.Lesson) or lesson.course_id != course.id:
            raise Failure(f"create lesson: unexpected body {lesson!r}")
        print(f"   lesson {lesson.id} at position {lesson.position}")

        data = mp4_bytes()
        step(f"PUT lesson content ({len(data)} bytes, MP4) via types.File")
        put = put_content.sync_detailed(
            course.id,
            lesson.id,
            client=api,
            body=types.File(payload=io.BytesIO(data), file_name="lesson.mp4", mime_type="video/mp4"),
            x_tenant=slug,
        )
        expect(put, 204, "upload lesson content")
        print(f"   204, ETag {put.headers.get('etag')}")

        step("GET lesson content")
        got = get_content.sync_detailed(course.id, lesson.id, client=api, x_tenant=slug)
        parsed = expect(got, 200, "download lesson content")
        if not isinstance(parsed, types.File):
            raise Failure(f"download: the generated client parsed {type(parsed).__name__}, not File")
        body = parsed.payload.read()
        if body != data:
            first = next((i for i, (a, b) in enumerate(zip(body, data)) if a != b), min(len(body), len(data)))
            raise Failure(
                f"download: {len(body)} bytes back for {len(data)} sent; first difference at byte {first}"
            )
        print(
            f"   {len(body)} bytes, identical; Content-Type {got.headers.get('content-type')}, "
            f"ETag {got.headers.get('etag')}"
        )

        step("list courses (following next_cursor)")
        seen = []
        after = types.UNSET
        for _ in range(1000):
            page = expect(
                list_courses.sync_detailed(client=api, limit=200, after=after, x_tenant=slug),
                200,
                "list courses",
            )
            seen.extend(str(item.id) for item in page.items)
            if not page.next_cursor:
                break
            after = uuid.UUID(page.next_cursor)
        if str(course.id) not in seen:
            raise Failure(f"list courses: {course.id} not among the {len(seen)} listed")
        print(f"   {len(seen)} course(s) listed, the new one among them")


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        run(*argv[1:])
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a crash of the client or of the generated code
        traceback.print_exc()
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"OK: all steps passed in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
