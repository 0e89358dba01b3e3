"""What the API-facing commands share: the cluster chosen by the global options, and running an
async body with a connected client where expected errors become one clear line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from netplane.api.manifests import ManifestError
from netplane.client.apply import ApplyError
from netplane.client.kubeconfig import ClusterConfig, KubeconfigError, load_config
from netplane.client.rest import APIClient, APIConnectionError, APIStatusError

T = TypeVar("T")


def cluster_config(ctx: click.Context) -> ClusterConfig:
    """The cluster named by the global --server/--kubeconfig options (or $KUBECONFIG)."""
    obj = ctx.find_root().obj or {}
    try:
        return load_config(server=obj.get("server"), kubeconfig=obj.get("kubeconfig"))
    except KubeconfigError as e:
        raise click.ClickException(str(e)) from e


def run_with_client(config: ClusterConfig, body: Callable[[APIClient], Awaitable[T]]) -> T:
    """Run body with a connected client; API, connection and input errors become one clear line."""

    async def main() -> T:
        async with APIClient(config) as client:
            return await body(client)

    try:
        return asyncio.run(main())
    except APIStatusError as e:
        raise click.ClickException(e.message) from e
    except (APIConnectionError, ApplyError, ManifestError, KubeconfigError) as e:
        raise click.ClickException(str(e)) from e
