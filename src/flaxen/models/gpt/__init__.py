from flaxen.models.gpt.modeling import GPT, GPTConfig, GPTForCausalLM, GPTForSequenceClassification

__all__ = ["GPT", "GPTConfig", "GPTForCausalLM", "GPTForSequenceClassification"]
