"""An export-friendly Llama graph serving prefill and decode, with a fixed-capacity KV cache.

Built from (and sharing the weights of) a transformers `LlamaForCausalLM`, it reproduces its
numerics with ops that ATC's ONNX parser accepts, and one dynamic axis (the sequence length S
of the call: L for the prefill, 1 for a decode step), which ATC compiles as two static shape
gears of one model, so the device holds one copy of the weights:
- RMSNorm as x * rsqrt(sum(x * x) / N + eps), reduced in float32 (no `pow`, no ReduceMean: the
  reference recipe's modeling_llama.patch replaces mean() by sum()/N for the 310P, whose LLM graphs
  it converts with precision `origin`);
- rotary embeddings as constant cos/sin tables (taken from the model's own rotary module, so any
  rope scaling carries over) gathered by position;
- attention masks built by comparisons of the positions against constant index vectors (no
  `triu`), applied with `Where` before a float32 softmax;
- each call attends to the cached slots before its first position plus its own new K/V, then
  writes those K/V into the cache with one `ScatterElements` (no per-layer blend or re-concat).

The KV cache is one tensor [layers, 2 (key, value), 1, kv_heads, capacity, head_dim]; each call
returns the whole cache with its positions' slots replaced, so a runtime feeds the output buffer
back as the next input. The graph returns the logits at the position that predicts the next token
and their argmax (`next_token`, int64 [1, 1]; first maximum on ties, like torch.argmax), so a
device runtime copies back 8 bytes instead of the logits.
"""
from __future__ import annotations

import torch
from torch import nn


class ExportRMSNorm(nn.Module):
    """LlamaRMSNorm without `pow` or ReduceMean: float32 sum / N, result cast back before the weight."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = float(norm.variance_epsilon)
        self.width = float(norm.weight.shape[0])  # a Python constant: traced as a Div by a scalar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt((h * h).sum(-1, keepdim=True) / self.width + self.eps)
        return self.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor, half: int) -> torch.Tensor:
    # `half` is passed as a Python int so the traced graph slices with constants, not Shape ops.
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ExportLlamaLayer(nn.Module):
    """One decoder layer split into `project` (norm + QKV + rotary) and `finish` (attention + MLP)."""

    def __init__(self, layer: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        attn = layer.self_attn
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.scaling = float(attn.scaling)
        self.mlp = layer.mlp
        self.input_norm = ExportRMSNorm(layer.input_layernorm)
        self.post_norm = ExportRMSNorm(layer.post_attention_layernorm)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [1, S, H], cos/sin [1, 1, S, D] -> q [1, heads, S, D], k and v [1, kv_heads, S, D]."""
        h = self.input_norm(x)
        q = self.q_proj(h).view(1, -1, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(1, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(1, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        half = self.head_dim // 2
        q = q * cos + _rotate_half(q, half) * sin
        k = k * cos + _rotate_half(k, half) * sin
        return q, k, v

    def finish(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               allowed: torch.Tensor) -> torch.Tensor:
        """Residual attention over (k, v) where `allowed` [.., S, T] is true, then the residual MLP."""
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:  # grouped-query attention: each K/V head serves `groups` query heads
            # (Concat of copies rather than expand(-1, ...), which traces into shape arithmetic.)
            k = torch.cat([k[:, :, None]] * groups, dim=2).reshape(1, self.num_heads, -1, self.head_dim)
            v = torch.cat([v[:, :, None]] * groups, dim=2).reshape(1, self.num_heads, -1, self.head_dim)
        scores = (torch.matmul(q, k.transpose(2, 3)) * self.scaling).float()
        scores = torch.where(allowed, scores, torch.tensor(torch.finfo(torch.float32).min))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        attended = torch.matmul(probs, v).transpose(1, 2).reshape(1, -1, self.num_heads * self.head_dim)
        x = x + self.o_proj(attended)
        return x + self.mlp(self.post_norm(x))


class LlmGraph(nn.Module):
    """(input_ids, patch_embeds, attention_mask, position_ids, past_kv) -> (logits, next_token,
    present_kv): prefill and every decode step in one graph, so the device holds one copy of the
    LLM weights. S, the length of `input_ids`/`attention_mask`/`position_ids`, is the graph's one
    dynamic axis: L for the prefill, 1 for a decode step (two ATC shape gears).

    - Prefill (S = L): ids [BOS, pad x P, text, pad...] at positions 0..L-1; the embeddings of
      positions 1..P are replaced by `patch_embeds`, so the sequence is the reference's
      [BOS, patches, text] right-padded; `attention_mask` marks its n real positions.
    - Decode (S = 1): the previous step's `next_token` buffer as `input_ids`, its position (the
      cache slot it writes) as `position_ids`, mask [[1]]; `patch_embeds` is bound but unused.
    Each query attends to the cached slots before the first new position (none in the prefill)
    and causally to the new tokens; the new K/V are then written at `position_ids` with one
    ScatterElements, so a runtime feeds `present_kv` back as the next step's `past_kv`. Cache
    slots never written (a fresh device buffer may hold NaN bit patterns) are zeroed before they
    meet a zero attention weight, so they cannot poison the sum.
    """

    def __init__(self, language_model: nn.Module, num_patches: int, capacity: int) -> None:
        super().__init__()
        config = language_model.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.num_patches, self.capacity = num_patches, capacity
        self.embed_tokens = language_model.model.embed_tokens
        self.layers = nn.ModuleList(
            ExportLlamaLayer(layer, self.num_heads, self.num_kv_heads, self.head_dim)
            for layer in language_model.model.layers
        )
        self.norm = ExportRMSNorm(language_model.model.norm)
        self.lm_head = language_model.lm_head
        dtype = language_model.lm_head.weight.dtype
        positions = torch.arange(capacity)[None, :]
        with torch.no_grad():
            cos, sin = language_model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
        self.register_buffer("cos_table", cos[0].to(dtype), persistent=False)  # [capacity, D]
        self.register_buffer("sin_table", sin[0].to(dtype), persistent=False)
        self.register_buffer("slots", torch.arange(capacity), persistent=False)

    def kv_shape(self) -> tuple[int, ...]:
        return (len(self.layers), 2, 1, self.num_kv_heads, self.capacity, self.head_dim)

    def _embed(self, input_ids, patch_embeds, position_ids):
        """Token embeddings with positions 1..P taken from `patch_embeds` ([1, S, H])."""
        x = self.embed_tokens(input_ids)
        # Strict comparisons only (Less/Greater; GreaterOrEqual/LessOrEqual are outside ATC_OPS).
        is_patch = (position_ids > 0) & (position_ids < self.num_patches + 1)  # [1, S]
        # Where instead of a clamp (Clip is outside the ATC op set here): index 0 off the patches.
        row = torch.where(is_patch, position_ids - 1, torch.tensor(0))
        patches = patch_embeds.index_select(1, row.reshape(-1))
        return torch.where(is_patch[..., None], patches, x)

    def forward(self, input_ids, patch_embeds, attention_mask, position_ids, past_kv):
        x = self._embed(input_ids, patch_embeds, position_ids)
        cos = self.cos_table[position_ids][:, None]  # [1, 1, S, D]
        sin = self.sin_table[position_ids][:, None]
        start = position_ids[:, :1]  # [1, 1]: the first slot this call writes
        cached = self.slots[None, :] < start  # [1, C]: slots written by earlier calls
        # Query i may read cached slot j (j < start) and new token k if k is real and k <= i.
        read_cached = cached[:, None, :] & (position_ids[:, :, None] > -1)  # [1, S, C]
        read_new = (position_ids[:, None, :] < position_ids[:, :, None] + 1) & (attention_mask > 0)[:, None, :]
        allowed = torch.cat((read_cached, read_new), dim=2)[:, None]  # [1, 1, S, C + S]
        keep = cached.reshape(1, 1, -1, 1)
        last = attention_mask.sum(-1) - 1  # [1]: the last real position predicts the next token
        past = past_kv.reshape((len(self.layers) * 2,) + past_kv.shape[2:])
        new_kv = []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.project(x, cos, sin)
            keys = torch.cat((past[2 * i], k), 2)
            values = torch.cat((torch.where(keep, past[2 * i + 1], torch.tensor(0.0, dtype=v.dtype)), v), 2)
            layer_allowed = allowed
            if i == len(self.layers) - 1:
                # Only the last real position's output feeds the logits, so the last layer attends
                # and runs its MLP for that one query (every position's K/V is still cached).
                x, q, layer_allowed = x.index_select(1, last), q.index_select(2, last), allowed.index_select(2, last)
            x = layer.finish(x, q, keys, values, layer_allowed)
            new_kv.append(torch.stack((k, v)))
        logits = self.lm_head(self.norm(x)).reshape(1, -1)
        next_token = torch.argmax(logits, dim=-1, keepdim=True)
        slot = position_ids.reshape(1, 1, 1, 1, -1, 1).expand(len(self.layers), 2, 1, self.num_kv_heads, -1,
                                                                self.head_dim)
        return logits, next_token, past_kv.scatter(4, slot, torch.stack(new_kv))


class EmbeddingGraph(nn.Module):
    """input_ids [1, 1 + max_text_tokens] -> token_embeds (BOS + text embeddings, padded)."""

    def __init__(self, language_model: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = language_model.model.embed_tokens

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)
