"""training: fit and judge the tile classifier (rule train_model, pipeline/rules/training.smk; verbs train,
train-model, evaluate).

Real tissue: labelled_images -> tile_features -> heads / finetune -> train_model (leave-one-source-out selection)
with real_metrics; evaluate (a model on labelled real patches). The v1 small CNN: train_data + train_textures ->
train (+ train_card, train_metrics).
"""
