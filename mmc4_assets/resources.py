"""Configurable resources: where data lives, where shards come from, how images are fetched.

Every field left unset falls back to the environment variable the design names, read when the
resource is used, so `MMC4_DATA_DIR=/big/disk dagster asset materialize ...` just works.
"""

from __future__ import annotations

import os
from datetime import timedelta

import dagster as dg
from pydantic import Field

from mmc4_assets.downloader import DownloadSettings
from mmc4_assets.downloader.politeness.sites import parse_site_budgets
from mmc4_assets.storage import DataStore, open_store
from mmc4_assets.training.packing import PartLimits


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class CorpusStorage(dg.ConfigurableResource):
    """The data folder every asset writes under (layout in docs/contracts.md): a local path or any
    fsspec URL (s3://bucket/prefix, gs://..., file://...)."""

    data_dir: str | None = Field(
        default=None,
        description="Root of all outputs, a path or an fsspec URL; unset reads MMC4_DATA_DIR, "
        "else 'data'.",
    )

    @property
    def location(self) -> str:
        return self.data_dir or os.environ.get("MMC4_DATA_DIR") or "data"

    def store(self) -> DataStore:
        """Where outputs are read and written: the local folder, or the object store."""
        return open_store(self.location)


class ShardSource(dg.ConfigurableResource):
    """Where shard files come from: a `{shard}` template over any fsspec URL, or a local folder."""

    docs_url: str | None = Field(
        default=None, description="Template or folder; unset reads MMC4_DOCS_URL."
    )

    @property
    def url(self) -> str | None:
        return self.docs_url or os.environ.get("MMC4_DOCS_URL") or None


_DEFAULTS = DownloadSettings()


class ImageDownloader(dg.ConfigurableResource):
    """HTTP and validation settings of the image downloader (defaults are polite and safe)."""

    max_concurrency: int = Field(
        default=_DEFAULTS.max_concurrency,
        description="Requests in flight at once (cheap: memory is bounded by body bytes).",
    )
    per_site: int = Field(
        default=_DEFAULTS.per_site,
        ge=1,
        description="Requests in flight at once to one site (a registrable domain, e.g. wp.com "
        "for i0..i3.wp.com), counted across every run of the deployment: where each site's "
        "learned limit starts (adaptive), or every site's fixed budget (adaptive: false).",
    )
    max_per_site: int = Field(
        default=_DEFAULTS.max_per_site,
        ge=1,
        description="The ceiling of every site's learned limit: the most connections any site "
        "gets from the whole deployment, however fast it answers.",
    )
    site_budgets: dict[str, int] | None = Field(
        default=None,
        description="Per-site ceilings (adaptive) or fixed budgets, e.g. {'wp.com': 16}; unset "
        "reads MMC4_SITE_BUDGETS ('wp.com=16,example.org=2').",
    )
    adaptive: bool = Field(
        default=_DEFAULTS.adaptive,
        description="Learn each site's limit from its answers (latency, errors, throttles); "
        "false: fixed budgets (per_site, site_budgets).",
    )
    respect_robots_txt: bool = Field(
        default=_DEFAULTS.respect_robots_txt,
        description="Obey robots.txt (RFC 9309) for the token mmc4-assets and '*'.",
    )
    site_lease_seconds: float = Field(
        default=_DEFAULTS.site_lease_seconds,
        gt=0,
        description="How long a dead run's site leases keep counting before they come back.",
    )
    connect_timeout: float = Field(
        default=_DEFAULTS.connect_timeout, description="Seconds to establish a connection."
    )
    read_timeout: float = Field(
        default=_DEFAULTS.read_timeout, description="Seconds without a byte from the server."
    )
    total_deadline: float = Field(
        default=_DEFAULTS.total_deadline,
        description="Seconds per image from its first attempt: every try and wait included.",
    )
    max_bytes: int = Field(default=_DEFAULTS.max_bytes, description="Largest body accepted.")
    max_pixels: int = Field(
        default=_DEFAULTS.max_pixels, description="Largest image (w*h) decoded."
    )
    max_attempts: int = Field(
        default=_DEFAULTS.max_attempts, description="Tries for retryable failures."
    )
    retry_after_cap: float = Field(
        default=_DEFAULTS.retry_after_cap,
        description="Longest pause (s) a site's 429/503 imposes on every run; images that "
        "cannot wait it out end rate_limited.",
    )
    user_agent: str = Field(default=_DEFAULTS.user_agent, description="User-Agent header sent.")
    respect_opt_out: bool = Field(
        default=_DEFAULTS.respect_opt_out,
        description="Skip images served with X-Robots-Tag noai / noimageai.",
    )
    allow_private_networks: bool | None = Field(
        default=None,
        description="Reach loopback/private addresses; unset reads MMC4_ALLOW_PRIVATE_NETWORKS.",
    )
    fetch_processes: int = Field(
        default=_DEFAULTS.fetch_processes,
        description="Processes fetching a shard, each owning a share of its hosts (0: two per "
        "CPU; 1: in the step's own process).",
    )
    ca_bundle: str | None = Field(
        default=None,
        description="PEM file of CA certificates trusted in addition to certifi's (a "
        "TLS-inspecting proxy's CA); unset reads MMC4_CA_BUNDLE. Verification is never off.",
    )
    standin_min_urls: int = Field(
        default=_DEFAULTS.standin_min_urls,
        ge=0,
        description="A body one site serves under this many distinct URLs (from "
        "standin_min_documents documents or more) is a stand-in: outcome placeholder (0: "
        "off; known stand-in URLs are still marked).",
    )
    standin_min_documents: int = Field(
        default=_DEFAULTS.standin_min_documents,
        ge=1,
        description="Documents a stand-in's URLs must come from (see standin_min_urls).",
    )
    min_image_side: int = Field(
        default=_DEFAULTS.min_image_side,
        ge=1,
        description="An image with a side under this many pixels is too_small (tracking "
        "pixels, spacers): no file kept.",
    )
    duplicate_max_distance: int = Field(
        default=_DEFAULTS.duplicate_max_distance,
        ge=-1,
        le=16,
        description="Perceptual hashes at most this many bits apart are near duplicates, "
        "recorded in duplicate_of (-1: exact duplicates only).",
    )

    def budgets(self) -> dict[str, int]:
        """The per-site overrides: the field, else MMC4_SITE_BUDGETS (a clear error if bad)."""
        if self.site_budgets is not None:
            return dict(self.site_budgets)
        text = os.environ.get("MMC4_SITE_BUDGETS", "")
        try:
            return parse_site_budgets(text)
        except ValueError as error:
            raise ValueError(f"MMC4_SITE_BUDGETS: {error}") from None

    def settings(self, ledger_url: str | None = None) -> DownloadSettings:
        """The engine's settings; ``ledger_url``: the deployment's site ledger."""
        allow_private = self.allow_private_networks
        if allow_private is None:
            allow_private = _env_flag("MMC4_ALLOW_PRIVATE_NETWORKS")
        return DownloadSettings(
            max_concurrency=self.max_concurrency,
            per_site=self.per_site,
            max_per_site=self.max_per_site,
            site_budgets=tuple(sorted(self.budgets().items())),
            adaptive=self.adaptive,
            ledger_url=ledger_url,
            site_lease_seconds=self.site_lease_seconds,
            respect_robots_txt=self.respect_robots_txt,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            total_deadline=self.total_deadline,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
            max_attempts=self.max_attempts,
            retry_after_cap=self.retry_after_cap,
            user_agent=self.user_agent,
            respect_opt_out=self.respect_opt_out,
            fetch_processes=self.fetch_processes,
            allow_private_networks=allow_private,
            ca_bundle=self.ca_bundle or os.environ.get("MMC4_CA_BUNDLE") or None,
            standin_min_urls=self.standin_min_urls,
            standin_min_documents=self.standin_min_documents,
            min_image_side=self.min_image_side,
            duplicate_max_distance=self.duplicate_max_distance,
        )


class StalenessPolicy(dg.ConfigurableResource):
    """When a downloaded image counts as stale and how hard the sensor may push per tick."""

    retry_cooldown_hours: float = Field(
        default=24.0, description="Wait before retrying a retryable failure."
    )
    max_age_days: float = Field(default=180.0, description="Revalidate ok images older than this.")
    max_runs_per_tick: int = Field(default=20, description="Run requests per sensor tick.")
    shards_per_tick: int = Field(
        default=2000, description="Shards whose metadata one sensor tick examines."
    )

    @property
    def retry_cooldown(self) -> timedelta:
        return timedelta(hours=self.retry_cooldown_hours)

    @property
    def max_age(self) -> timedelta:
        return timedelta(days=self.max_age_days)


class BackfillSettings(dg.ConfigurableResource):
    """How fast the backfill schedule walks through never-materialized shards."""

    shards_per_tick: int = Field(
        default=4, ge=1, description="Runs (one shard each) launched per schedule tick."
    )


_PART_LIMITS = PartLimits()


class TrainingShardSettings(dg.ConfigurableResource):
    """How big each training tar (`webdataset/{shard}-{part}.tar`) may grow, and which
    documents it leaves out."""

    documents_per_part: int = Field(
        default=_PART_LIMITS.documents, ge=1, description="Samples in one tar at most."
    )
    bytes_per_part: int = Field(
        default=_PART_LIMITS.bytes, ge=1, description="Bytes of one tar at most (512 MiB)."
    )
    leave_out_url_duplicates: bool = Field(
        default=False,
        description="Leave out the documents mmc4 marks could_have_url_duplicate (about 3%).",
    )

    def limits(self) -> PartLimits:
        return PartLimits(documents=self.documents_per_part, bytes=self.bytes_per_part)


def ledger_url(instance: dg.DagsterInstance) -> str:
    """Where the runs of this deployment share site budgets: the instance's own Postgres when it
    has one (runs on many machines), else a SQLite file in the instance's folder (every run on
    this machine that uses the instance)."""
    postgres_url = getattr(instance.run_storage, "postgres_url", None)
    if postgres_url:
        return postgres_url
    folder = os.path.abspath(instance.root_directory)
    return "sqlite:///" + os.path.join(folder, "mmc4", "site_ledger.sqlite")
