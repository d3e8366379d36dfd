"""Run OpenVLA's LIBERO image path with TensorFlow itself (libero_utils.py `resize_image`), for
test_tf_image.py: reads uint8 frames from an .npz (argv[1]), writes each stage's output to
another .npz (argv[2]). Runs in any interpreter with tensorflow and numpy (see `make tf-check`)."""
import sys

import numpy as np
import tensorflow as tf


def main(frames_path: str, out_path: str) -> None:
    frames = np.load(frames_path)
    out = {}
    for name in frames.files:
        encoded = tf.image.encode_jpeg(frames[name])
        decoded = tf.io.decode_image(encoded, expand_animations=False, dtype=tf.uint8)
        resized = tf.image.resize(decoded, (224, 224), method="lanczos3", antialias=True)
        final = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
        out[f"{name}.jpeg"] = np.frombuffer(encoded.numpy(), np.uint8)
        out[f"{name}.decoded"] = decoded.numpy()
        out[f"{name}.resized"] = resized.numpy()
        out[f"{name}.final"] = final.numpy()
    out["tensorflow_version"] = np.array(tf.__version__)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
