"""`netplane apply`, `get` and `delete`: kubectl's everyday verbs over netplane.client.

Thin by design: parse options, call the client library, print. Expected failures (a bad manifest, an
unknown kind, an unreachable server, an API error) become one ``Error: ...`` line on stderr and exit
status 1, through click.ClickException.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import yaml

from netplane.api.manifests import Document, ManifestError, load_manifests
from netplane.api.resources import ResourceInfo, resolve_name
from netplane.api.tables import human_duration
from netplane.cli.clientctx import cluster_config, run_with_client
from netplane.client.apply import ApplyError, apply_object, display_ref, qualified_kind, resolve_target
from netplane.client.rest import TABLE_ACCEPT, APIClient, APIStatusError, resource_path

T = TypeVar("T")




def _load(files: tuple[str, ...]) -> list[Document]:
    docs: list[Document] = []
    try:
        for f in files:
            docs.extend(load_manifests(f, sys.stdin))
    except ManifestError as e:
        raise click.ClickException(str(e)) from e
    if not docs:
        raise click.ClickException(f"no objects in {', '.join(files)}")
    return docs


def _resource(name: str) -> ResourceInfo:
    info = resolve_name(name)
    if info is None:
        raise click.ClickException(f'the server doesn\'t have a resource type "{name}"')
    return info


# --------------------------------------------------------------------------------------------- apply

@click.command()
@click.option("-f", "--filename", "files", multiple=True, required=True,
              help="A manifest file, a directory of *.yaml/*.yml/*.json files, or - for stdin.")
@click.option("-n", "--namespace", default=None, help="Namespace for objects that do not name one.")
@click.pass_context
def apply(ctx: click.Context, files: tuple[str, ...], namespace: str | None) -> None:
    """Create objects, or update them to match the manifests (like kubectl apply)."""
    config = cluster_config(ctx)
    docs = _load(files)
    # Catch mistakes in any document before changing anything.
    for doc in docs:
        try:
            resolve_target(doc, config.namespace, namespace)
        except ApplyError as e:
            raise click.ClickException(str(e)) from e

    async def body(client: APIClient) -> None:
        for doc in docs:
            click.echo(await apply_object(client, doc, config.namespace, namespace))

    run_with_client(config, body)


# ----------------------------------------------------------------------------------------------- get

@click.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("-n", "--namespace", default=None, help="The namespace (default: the kubeconfig context's).")
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json", "name"]), default=None)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. app=web,tier!=db.")
@click.option("--field-selector", default=None, help="Field selector, e.g. metadata.name=web.")
@click.pass_context
def get(ctx: click.Context, kind: str, names: tuple[str, ...], namespace: str | None, all_namespaces: bool,
        output: str | None, selector: str | None, field_selector: str | None) -> None:
    """Show objects of one kind: a table, or YAML/JSON (like kubectl get)."""
    if "/" in kind and not names:
        kind, _, single = kind.partition("/")
        names = (single,)
    info = _resource(kind)
    if names and all_namespaces:
        raise click.ClickException("a resource cannot be retrieved by name across all namespaces")
    config = cluster_config(ctx)
    ns: str | None = None
    if info.namespaced and not all_namespaces:
        ns = namespace or config.namespace
    structured = output in ("yaml", "json", "name")

    async def body(client: APIClient) -> list[dict[str, Any]]:
        accept = "application/json" if structured else TABLE_ACCEPT
        if names:
            return [await client.request("GET", resource_path(info, ns, n), accept=accept) for n in names]
        return [await client.list(info, ns, selector, field_selector, accept=accept)]

    answers = run_with_client(config, body)

    if structured:
        objs = answers if names else [_with_type(o, info) for o in answers[0].get("items") or []]
        for o in objs:  # as kubectl does without --show-managed-fields
            (o.get("metadata") or {}).pop("managedFields", None)
        if not objs:
            click.echo(_no_resources(info, ns), err=True)
            return
        if output == "name":
            for o in objs:
                click.echo(display_ref(info, (o.get("metadata") or {}).get("name", "")))
            return
        doc: dict[str, Any] = objs[0] if names and len(objs) == 1 else {
            "apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}}
        if output == "json":
            click.echo(json.dumps(doc, indent=4))
        else:
            click.echo(to_yaml(doc), nl=False)
        return

    with_ns = all_namespaces and info.namespaced
    header, rows = _table(answers, info, wide=output == "wide", with_namespace=with_ns)
    if not rows:
        click.echo(_no_resources(info, ns), err=True)
        return
    click.echo(format_table(header, rows), nl=False)


class _YAMLDumper(yaml.SafeDumper):
    """Multi-line strings as block literals (kubectl prints the last-applied annotation that way)."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Block style cannot carry trailing spaces on a line; keep quoting for those.
    if "\n" in value and not any(line.endswith(" ") for line in value.split("\n")):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_YAMLDumper.add_representer(str, _str_representer)


def to_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_YAMLDumper, default_flow_style=False, sort_keys=True, width=10**9)


def _with_type(obj: dict[str, Any], info: ResourceInfo) -> dict[str, Any]:
    obj.setdefault("apiVersion", info.api_version)
    obj.setdefault("kind", info.kind)
    return obj


def _no_resources(info: ResourceInfo, ns: str | None) -> str:
    return f"No resources found in {ns} namespace." if ns else "No resources found"


def _table(answers: list[dict[str, Any]], info: ResourceInfo, wide: bool,
           with_namespace: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows from Table answers, or NAME/AGE from plain objects when the server sent none."""
    header: list[str] = []
    rows: list[list[str]] = []
    for answer in answers:
        if answer.get("kind") == "Table":
            cols = [c for c in answer.get("columnDefinitions") or [] if wide or not c.get("priority")]
            keep = [i for i, c in enumerate(answer.get("columnDefinitions") or [])
                    if wide or not c.get("priority")]
            header = [str(c.get("name", "")).upper() for c in cols]
            for row in answer.get("rows") or []:
                cells = row.get("cells") or []
                values = [_cell(cells[i]) if i < len(cells) else "<none>" for i in keep]
                if with_namespace:
                    meta = (row.get("object") or {}).get("metadata") or {}
                    values.insert(0, str(meta.get("namespace") or ""))
                rows.append(values)
        else:
            header = ["NAME", "AGE"]
            objs = answer.get("items") if "items" in answer else [answer]
            for o in objs or []:
                meta = o.get("metadata") or {}
                values = [str(meta.get("name", "")), age(meta.get("creationTimestamp"))]
                if with_namespace:
                    values.insert(0, str(meta.get("namespace") or ""))
                rows.append(values)
    if with_namespace:
        header = ["NAMESPACE", *header]
    return header, rows


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "<none>" if value is None else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns as kubectl's tabwriter lays them out: min width 10, padding 3, last column unpadded."""
    lines = [header, *rows]
    ncols = max(len(r) for r in lines)
    widths = [max(max((len(r[i]) for r in lines if i < len(r)), default=0) + 3, 10) for i in range(ncols)]
    out = []
    for r in lines:
        parts = [cell.ljust(widths[i]) if i < len(r) - 1 else cell for i, cell in enumerate(r)]
        out.append("".join(parts).rstrip())
    return "\n".join(out) + "\n"


def age(timestamp: Any, now: datetime | None = None) -> str:
    """kubectl's short human duration since an RFC 3339 timestamp ('<unknown>' when there is none)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return human_duration(((now or datetime.now(UTC)) - then).total_seconds())


# -------------------------------------------------------------------------------------------- delete

@click.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, help="Delete the objects in these manifests.")
@click.option("-n", "--namespace", default=None, help="The namespace (default: the kubeconfig context's).")
@click.option("--ignore-not-found", is_flag=True, help="Treat an object that does not exist as deleted.")
@click.option("--grace-period", type=int, default=None, help="Seconds the object gets to terminate.")
@click.pass_context
def delete(ctx: click.Context, kind: str | None, names: tuple[str, ...], files: tuple[str, ...],
           namespace: str | None, ignore_not_found: bool, grace_period: int | None) -> None:
    """Delete objects named by manifests (-f) or by KIND NAME... (like kubectl delete)."""
    if files and kind:
        raise click.ClickException("give either -f FILE or KIND NAME, not both")
    targets: list[tuple[ResourceInfo, str, str | None]] = []
    config = cluster_config(ctx)
    if files:
        for doc in _load(files):
            try:
                t = resolve_target(doc, config.namespace, namespace)
            except ApplyError as e:
                raise click.ClickException(str(e)) from e
            targets.append((t.info, t.name, t.namespace))
        # Namespaces last: deleting one removes what is in it, and the objects listed after it in
        # the file would then fail with NotFound (kubectl keeps file order; this is friendlier).
        targets.sort(key=lambda t: t[0].kind == "Namespace")
    else:
        if not kind:
            raise click.ClickException("give -f FILE or KIND NAME")
        if "/" in kind and not names:
            kind, _, single = kind.partition("/")
            names = (single,)
        info = _resource(kind)
        if not names:
            raise click.ClickException(f"give the name of the {info.singular} to delete")
        ns = (namespace or config.namespace) if info.namespaced else None
        targets = [(info, n, ns) for n in names]

    async def body(client: APIClient) -> list[str]:
        errors: list[str] = []
        for info, name, ns in targets:
            try:
                await client.delete(info, name, ns, grace_period_seconds=grace_period)
            except APIStatusError as e:
                if e.not_found and ignore_not_found:
                    continue
                if e.not_found:
                    # Keep going, like kubectl: the other objects are still deleted.
                    errors.append(e.message)
                    continue
                raise
            click.echo(f'{qualified_kind(info)} "{name}" deleted')
        return errors

    errors = run_with_client(config, body)
    if errors:
        raise click.ClickException("; ".join(errors))
