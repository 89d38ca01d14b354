"""Draw docs/img/builtin_pairs.png: a frame of every built-in task, target and source side by side.

Usage: python scripts/builtin_picture.py [--out docs/img/builtin_pairs.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import coworld.envs as envs  # noqa: E402


def frame(env_id: str, seed: int, steps: int):
    """The image after ``steps`` expert steps, so the agent is on its way."""
    env = envs.make(env_id)
    policy = envs.scripted_policy(env, 1.0, seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        obs, *_ = env.step(policy(obs))
    return obs["image"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img/builtin_pairs.png")
    args = parser.parse_args()
    tasks = ["reach", "push", "wall"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(4.4, 2.3 * len(tasks)))
    for row, task in enumerate(tasks):
        for col, env_id in enumerate([f"builtin:{task}", f"builtin:{task}-src"]):
            ax = axes[row, col]
            ax.imshow(frame(env_id, seed=row + 1, steps=6), interpolation="nearest")
            ax.set_title(f"{env_id}  (A={envs.spec(env_id).action_dim})", fontsize=8)
            ax.axis("off")
    fig.suptitle("target (left) and source (right), same seed", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
