"""One sub-package per kind of acquisition; each exposes ``MODALITY`` (a :class:`streamer.core.modality.Modality`)
and registers it under the entry-point group ``streamer.modalities``. Core and pipeline never import from here."""
