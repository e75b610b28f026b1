"""Train GhostFaceNetV1 with the official GhostFaceNets code (TF 2.15 / Keras 2): the notebook's recipe.

Run by `benchmarks/train_vs_official.py` under a TensorFlow 2.15 interpreter, never imported by the library:

    <tf215 python> benchmarks/official_train_driver.py OFFICIAL_REPO DATA OUTPUT.json --epochs 8 --batch-size 64
        [--width 1.3] [--strides 2] [--seed 0]

The model is built as `training_scripts.ipynb` builds it (GDC head, 512-d, BatchNorm momentum 0.9 / epsilon
1e-5, L2 5e-4 on every kernel but BatchNorm, ReLU -> PReLU), at the paper width and stride asked for (the
notebook's `buildin_models("ghostnetv1")` hard-codes width 1, so the backbone is built with
`ghost_model.GhostNet(width=...)` and handed to `buildin_models`). Training is the notebook's `train.Train` with
SGD(0.1, momentum 0.9), ArcFace s 32 for 1 epoch then s 64, cosine LR over `--epochs` (lr_decay_steps = epochs,
so one cosine period covers the run), flip only (random_status 0), the head's L2 from the model
(output_weight_decay 1). Writes OUTPUT.json: per-epoch wall and CPU seconds, loss and accuracy, and the path
of the saved embedding model (.h5).
"""

import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("repo")
    parser.add_argument("data")
    parser.add_argument("output")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.3)
    parser.add_argument("--strides", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = os.path.dirname(os.path.abspath(args.output))
    os.chdir(work)  # the official code writes checkpoints/ and its dataset cache into the working folder
    sys.path.insert(0, args.repo)
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    import GhostFaceNets
    import losses
    import train
    from backbones import ghost_model

    tf.random.set_seed(args.seed)
    np.random.seed(args.seed)
    backbone = ghost_model.GhostNet(input_shape=(112, 112, 3), include_top=False, width=args.width,
                                    strides=args.strides)
    basic_model = GhostFaceNets.buildin_models(backbone, dropout=0, emb_shape=512, output_layer="GDC",
                                               bn_momentum=0.9, bn_epsilon=1e-5, use_bias=args.strides == 1)
    basic_model = GhostFaceNets.add_l2_regularizer_2_model(basic_model, weight_decay=5e-4,
                                                           apply_to_batch_normal=False)
    basic_model = GhostFaceNets.replace_ReLU_with_PReLU(basic_model)

    records = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            records.append({"epoch": epoch + 1, "seconds": time.perf_counter() - self.started,
                            "cpu_seconds": time.process_time() - self.cpu_started,
                            "loss": float(logs.get("loss", float("nan"))),
                            "accuracy": float(logs.get("accuracy", float("nan")))})

    trainer = train.Train(args.data, eval_paths=[], save_path="official.h5", basic_model=basic_model, model=None,
                          lr_base=0.1, lr_decay=0.5, lr_decay_steps=args.epochs, lr_min=1e-5,
                          batch_size=args.batch_size, random_status=0, eval_freq=1, output_weight_decay=1)
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    schedule = [{"loss": losses.ArcfaceLoss(scale=32), "epoch": 1, "optimizer": optimizer},
                {"loss": losses.ArcfaceLoss(scale=64), "epoch": args.epochs - 1}]
    trainer.custom_callbacks.append(Clock())  # the official hook for a caller's callbacks, in every stage
    trainer.train(schedule, 0)
    saved = os.path.join(work, "checkpoints", "official_basic_model_latest.h5")
    with open(args.output, "w") as handle:
        json.dump({"epochs": records, "model": saved}, handle, indent=1)


if __name__ == "__main__":
    main()
