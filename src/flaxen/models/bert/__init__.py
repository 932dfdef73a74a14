from flaxen.models.bert.modeling import Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification

__all__ = ["Bert", "BertConfig", "BertForMaskedLM", "BertForSequenceClassification"]
