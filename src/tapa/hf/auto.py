"""``import tapa.hf.auto`` registers TapaConfig / TapaForCausalLM with transformers'
AutoConfig and AutoModelForCausalLM, so exported TAPA, NoPE and ALiBi folders load without
``trust_remote_code`` in a process that has tapa (without tapa, the folder's own code
loads with ``trust_remote_code=True``)."""

from transformers import AutoConfig, AutoModelForCausalLM

from tapa.hf.remote.configuration_tapa import TapaConfig
from tapa.hf.remote.modeling_tapa import TapaForCausalLM

AutoConfig.register("tapa", TapaConfig, exist_ok=True)
AutoModelForCausalLM.register(TapaConfig, TapaForCausalLM, exist_ok=True)

__all__ = ["TapaConfig", "TapaForCausalLM"]
