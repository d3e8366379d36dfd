"""Export-friendly OpenVLA-OFT graphs: the one bidirectional LLM pass and the action head.

The pass reuses the prefill graph's Llama layer pieces (RMSNorm without `pow`, rotary tables
gathered by position, masks by comparison, float32 softmax) with every query attending to every
real key. It builds the sequence of `PassLayout` (text padding in the middle, masked out as keys;
zero embeddings for the placeholders and the stop token's embedding as constants) and returns the
final-norm hidden states of the positions the action head reads: the last real text token and
the first `chunk x action_dim - 1` placeholders (OFT's window, see `model/oft.py`). The last
layer runs its attention and MLP only for those rows.
"""
from __future__ import annotations

import torch
from torch import nn

from openvla_ros.export.llama_graphs import ExportLlamaLayer, ExportRMSNorm
from openvla_ros.oft import STOP_TOKEN_ID, PassLayout


class BidirectionalPassGraph(nn.Module):
    """(token_embeds, patch_embeds_0.., [proprio_embeds], attention_mask, position_ids) -> action_hidden."""

    def __init__(self, language_model: nn.Module, layout: PassLayout) -> None:
        super().__init__()
        config = language_model.config
        num_heads = int(config.num_attention_heads)
        num_kv_heads = int(getattr(config, "num_key_value_heads", None) or num_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
        self.layout = layout
        self.layers = nn.ModuleList(ExportLlamaLayer(layer, num_heads, num_kv_heads, head_dim)
                                    for layer in language_model.model.layers)
        self.norm = ExportRMSNorm(language_model.model.norm)
        embed = language_model.model.embed_tokens.weight
        n_actions = layout.chunk_layout.num_action_tokens
        with torch.no_grad():
            cos, sin = language_model.model.rotary_emb(torch.zeros(1, dtype=torch.float32),
                                                       torch.arange(layout.length)[None])
            tail = torch.cat((torch.zeros(n_actions, embed.shape[1], dtype=embed.dtype),
                              embed[STOP_TOKEN_ID:STOP_TOKEN_ID + 1]))
        self.register_buffer("cos_table", cos[0].to(embed.dtype), persistent=False)
        self.register_buffer("sin_table", sin[0].to(embed.dtype), persistent=False)
        self.register_buffer("action_tail", tail[None].clone(), persistent=False)
        # Slots the head reads after the last real text token: placeholders 0 .. n - 2.
        self.register_buffer("placeholder_rows",
                             torch.arange(layout.placeholder_start, layout.placeholder_start + n_actions - 1),
                             persistent=False)

    def forward(self, token_embeds, *rest):
        *patch_parts, attention_mask, position_ids = rest
        x = torch.cat((token_embeds[:, :1], *patch_parts, token_embeds[:, 1:], self.action_tail), dim=1)
        cos = self.cos_table[position_ids][:, None]  # [1, 1, L, D]
        sin = self.sin_table[position_ids][:, None]
        allowed = (attention_mask > 0)[:, None, None, :]  # [1, 1, 1, L]: every query, real keys only
        last_text = attention_mask[:, :self.layout.placeholder_start].sum(-1) - 1  # [1]
        rows = torch.cat((last_text, self.placeholder_rows))
        for index, layer in enumerate(self.layers):
            q, k, v = layer.project(x, cos, sin)
            if index == len(self.layers) - 1:
                x, q = x.index_select(1, rows), q.index_select(2, rows)
            x = layer.finish(x, q, k, v, allowed)
        return self.norm(x)
