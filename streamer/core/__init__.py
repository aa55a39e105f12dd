"""Generic core: wire codec, modality interface and registry, recordings, compiled inference, conformal, bundles, training helpers."""
