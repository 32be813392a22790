"""JetStream streams, KV buckets and object stores that every node makes sure of at
start: the first node to ask creates one, and one created meanwhile by another node is
just used."""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig


async def ensure_stream(js: Any, config: StreamConfig) -> None:
    """The stream ``config`` names exists (created with ``config`` if it did not)."""
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(config.name)  # another node created it meanwhile


async def ensure_key_value(js: Any, config: KeyValueConfig) -> Any:
    """The KV bucket ``config`` names (created with ``config`` if it did not exist)."""
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            return await js.key_value(config.bucket)  # another node created it meanwhile


async def ensure_object_store(js: Any, config: ObjectStoreConfig) -> Any:
    """The object store ``config`` names (created with ``config`` if it did not exist)."""
    try:
        return await js.object_store(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_object_store(config.bucket, config)
        except nats.js.errors.BadRequestError:
            return await js.object_store(config.bucket)  # another node created it meanwhile
