"""Files written verbatim into exported TAPA / NoPE / ALiBi folders (``trust_remote_code``):
they import only torch and transformers, so the folder loads where tapa is not installed."""
