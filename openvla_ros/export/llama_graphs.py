"""Export-friendly Llama prefill and decoder graphs with a fixed-capacity KV cache.

Built from (and sharing the weights of) a transformers `LlamaForCausalLM`, they reproduce its
numerics with ops that ATC's ONNX parser accepts and static shapes only:
- RMSNorm as x * rsqrt(sum(x * x) / N + eps), reduced in float32 (no `pow`, no ReduceMean: the
  reference recipe's modeling_llama.patch replaces mean() by sum()/N for the 310P, whose LLM graphs
  it converts with precision `origin`);
- rotary embeddings as constant cos/sin tables (taken from the model's own rotary module, so any
  rope scaling carries over) gathered by position;
- attention masks built by comparisons against constant index vectors (no `triu`), applied with
  `Where` before a float32 softmax;
- the decoder attends to the cached slots before `cache_position` plus the new token's own K/V,
  then writes that K/V into the cache with one `ScatterElements` (no per-layer blend or re-concat).

The KV cache is one tensor [layers, 2 (key, value), 1, kv_heads, capacity, head_dim]. Prefill
writes slots 0..L-1 (zeros beyond); each decoder run returns the whole cache with slot
`cache_position` replaced, so a runtime feeds the output buffer back as the next input.
Both graphs return the logits at the position that predicts the next token and their argmax
(`next_token`, int64 [1, 1]; first maximum on ties, like torch.argmax), so a device runtime can
copy back 8 bytes instead of the logits.
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


class _LlamaGraphBase(nn.Module):
    """Shared pieces of the prefill and decoder graphs."""

    def __init__(self, language_model: nn.Module, capacity: int) -> None:
        super().__init__()
        config = language_model.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.capacity = capacity
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

    def head(self, hidden: torch.Tensor):
        """hidden [1, 1, H] -> logits [1, V] and next_token int64 [1, 1]."""
        logits = self.lm_head(self.norm(hidden)).reshape(1, -1)
        return logits, torch.argmax(logits, dim=-1, keepdim=True)


class PrefillGraph(_LlamaGraphBase):
    """(token_embeds, patch_embeds, attention_mask, position_ids) -> (logits, next_token, present_kv).

    The multimodal sequence is [token_embeds[:, :1] (BOS), patch_embeds, token_embeds[:, 1:]]
    (length L, right-padded); `attention_mask` marks its real positions and the logits come from
    the last real one (index sum(mask) - 1).
    """

    def __init__(self, language_model: nn.Module, length: int, capacity: int) -> None:
        super().__init__(language_model, capacity)
        self.length = length
        idx = torch.arange(length)
        self.register_buffer("causal", (idx[None, :] <= idx[:, None])[None, None], persistent=False)
        dtype = language_model.lm_head.weight.dtype
        self.register_buffer(
            "kv_tail", torch.zeros(1, self.num_kv_heads, capacity - length, self.head_dim, dtype=dtype),
            persistent=False,
        )

    def forward(self, token_embeds, patch_embeds, attention_mask, position_ids):
        x = torch.cat((token_embeds[:, :1], patch_embeds, token_embeds[:, 1:]), dim=1)
        cos = self.cos_table[position_ids][:, None]  # [1, 1, L, D]
        sin = self.sin_table[position_ids][:, None]
        allowed = self.causal & (attention_mask > 0)[:, None, None, :]
        last = attention_mask.sum(-1) - 1  # [1]
        present = []
        for index, layer in enumerate(self.layers):
            q, k, v = layer.project(x, cos, sin)
            if index == len(self.layers) - 1:
                # Only the last real position's output feeds the logits, so the last layer attends
                # and runs its MLP for that one query (every position's K/V is still cached).
                x, q, allowed = x.index_select(1, last), q.index_select(2, last), allowed.index_select(2, last)
            x = layer.finish(x, q, k, v, allowed)
            present.append(torch.stack((torch.cat((k, self.kv_tail), 2), torch.cat((v, self.kv_tail), 2))))
        logits, next_token = self.head(x)
        return logits, next_token, torch.stack(present)


class DecoderGraph(_LlamaGraphBase):
    """(token, cache_position, past_kv) -> (logits, next_token, present_kv): one greedy step.

    Embeds `token` itself (so the previous step's `next_token` buffer feeds it directly), writes
    its K/V at slot `cache_position` and attends to slots <= cache_position.
    """

    def __init__(self, language_model: nn.Module, capacity: int) -> None:
        super().__init__(language_model, capacity)
        self.embed_tokens = language_model.model.embed_tokens

    def forward(self, token, cache_position, past_kv):
        x = self.embed_tokens(token)  # [1, 1, H]
        cos = self.cos_table.index_select(0, cache_position)[None, None]  # [1, 1, 1, D]
        sin = self.sin_table.index_select(0, cache_position)[None, None]
        # Keys: the cached slots before cache_position, then the new token's own K/V appended as
        # one extra slot, so attention reads the input cache as is and the cache is written once.
        own_slot = torch.ones(1, dtype=torch.bool)
        allowed = torch.cat((self.slots < cache_position, own_slot)).view(1, 1, 1, self.capacity + 1)
        # One flat index per (layer, key/value): the runtime then splits the cache in one pass.
        past = past_kv.reshape((len(self.layers) * 2,) + past_kv.shape[2:])
        new_kv = []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.project(x, cos, sin)
            keys = torch.cat((past[2 * i], k), 2)
            values = torch.cat((past[2 * i + 1], v), 2)
            x = layer.finish(x, q, keys, values, allowed)
            new_kv.append(torch.stack((k, v)))
        logits, next_token = self.head(x)
        layers = len(self.layers)
        slot = cache_position.view(1, 1, 1, 1, 1, 1).expand(layers, 2, 1, self.num_kv_heads, 1, self.head_dim)
        return logits, next_token, past_kv.scatter(4, slot, torch.stack(new_kv))


class EmbeddingGraph(nn.Module):
    """input_ids [1, 1 + max_text_tokens] -> token_embeds (BOS + text embeddings, padded)."""

    def __init__(self, language_model: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = language_model.model.embed_tokens

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)
