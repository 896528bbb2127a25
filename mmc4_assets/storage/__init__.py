"""Where the data folder lives: a local path, or any fsspec URL (s3://, gs://, az://, ...).

No Dagster here. `open_store(MMC4_DATA_DIR)` gives a `DataStore`; the assets work in its
`workspace()`, a local folder laid out like the data folder, and `publish` what they wrote.
"""

from mmc4_assets.storage.datastore import DataStore, LocalStore, RemoteStore, open_store

__all__ = ["DataStore", "LocalStore", "RemoteStore", "open_store"]
