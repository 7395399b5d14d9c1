"""Dense targets batched for the models that learn from asymmetric labels (HydraNet, SegDep)."""
import torch

__all__ = ["batch_dense_targets"]


def batch_dense_targets(batched_inputs, padded_size, ignore_value, device):
    """``(sem_seg (N, H, W) long, depth (N, H, W) float, depth_valid (N, H, W) bool)`` at the padded
    size. A sample without ``sem_seg`` is all ``ignore_value``; without ``depth`` all invalid, so
    each task's loss sees only the samples and pixels that carry its label."""
    n = len(batched_inputs)
    sem = torch.full((n, *padded_size), ignore_value, dtype=torch.long, device=device)
    depth = torch.zeros((n, *padded_size), device=device)
    valid = torch.zeros((n, *padded_size), dtype=torch.bool, device=device)
    for i, x in enumerate(batched_inputs):
        if "sem_seg" in x:
            h, w = x["sem_seg"].shape[-2:]
            sem[i, :h, :w] = x["sem_seg"].to(device)
        if "depth" in x:
            h, w = x["depth"].shape[-2:]
            depth[i, :h, :w] = x["depth"].to(device)
            mask = x["depth_valid"] if "depth_valid" in x else x["depth"] > 0
            valid[i, :h, :w] = mask.to(device)
    return sem, depth, valid
