"""Attention processors that live next to what they patch (diffusers' `AttentionModuleMixin` modules).

`attention_wan`: Stand-In reference attention on `WanTransformer3DModel.blocks[i].attn1`. Heavy imports (torch,
diffusers) happen inside the module, which is imported only by the code that uses it.
"""
