"""Python SDK for a modelhost server (httpx; sync and async). Imports no server code."""

from modelhost.client.http import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
