"""The ernjax_mri TFDS dataset; its builder lives in `ernjax.data.builder` (the data flow package).

TFDS convention keeps a dataset's README.md, CITATIONS.bib and dummy_data/ in a package of its own,
with a `<name>_dataset_builder` module naming the builder; this is that module.
"""

from ernjax.data.builder import VERSION, Builder, ErnjaxMriConfig

__all__ = ["VERSION", "Builder", "ErnjaxMriConfig"]
