"""StyleGAN2 generator and discriminator (Karras et al. 2020, "Analyzing and Improving the Image Quality
of StyleGAN", with the ADA paper's configuration options).

Constructor arguments, attribute names, and parameter/buffer names, shapes and registration order
follow stylegan2-ada-pytorch exactly, so NVIDIA's pickles load by name
(patches/network_pickle.py) and `training_options.json` files stay interchangeable.

Conventions:
- Equalised learning rate: weights are stored N(0, 1) (FC: / lr_multiplier) and scaled at run time
  by 1 / sqrt(fan_in) (FC: lr_multiplier / sqrt(fan_in)).
- fp16: a block computes in float16 only when it is configured for it (`num_fp16_res`) AND its input
  lives on a CUDA device. On CPU every block runs in float32: half-precision convolutions on CPU are
  either unsupported or far slower than float32 depending on the PyTorch build, and the point of fp16
  (tensor-core throughput) does not exist there. fp16 configurations therefore still run on CPU.
- Layout comments: [NCHW] activations, [OIkk] weights, [NOIkk] per-sample weights.
"""

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import bias_act
from torch_utils.ops import conv2d_resample
from torch_utils.ops import fma
from torch_utils.ops import upfirdn2d

SQRT_HALF = np.sqrt(0.5)  # resnet branch gain: keeps the variance of (skip + residual) unchanged


def _compute_dtype(use_fp16, force_fp32, device):
    """float16 only for fp16 blocks on CUDA (see module docstring), else float32."""
    return torch.float16 if (use_fp16 and not force_fp32 and device.type == 'cuda') else torch.float32


def _memory_format(channels_last, dtype):
    return torch.channels_last if (channels_last and dtype == torch.float16) else torch.contiguous_format


# ----------------------------------------------------------------------------
# Functional building blocks.


@misc.profiled_function
def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """x / sqrt(mean(x^2) + eps) along `dim` (StyleGAN's pixel norm of the latent)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


@misc.profiled_function
def modulated_conv2d(
    x,                  # [NIhw] input activations
    weight,             # [OIkk] shared convolution weight
    styles,             # [NI] per-sample, per-input-channel scales
    noise=None,         # None or a tensor broadcastable to the output [NOHW]
    up=1,               # integer upsampling factor
    down=1,             # integer downsampling factor
    padding=0,          # padding w.r.t. the upsampled image
    resample_filter=None,  # FIR filter from upfirdn2d.setup_filter
    demodulate=True,    # StyleGAN2 eq. 3: rescale each output channel to unit expected std
    flip_weight=True,   # False = true convolution (used by up=2 layers)
    fused_modconv=True,  # one grouped conv with per-sample weights, or scale activations around a shared conv
):
    """Modulated (and optionally demodulated) convolution, StyleGAN2 section 2.2.

    Modulation: w'[n,o,i] = weight[o,i] * styles[n,i]. Demodulation: d[n,o] = 1/sqrt(sum_{i,k,k} w'^2 + 1e-8).
    Noise is added after demodulation. The fused and non-fused paths compute the same function.

    Returns:
        [NOHW] tensor of x's dtype.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(weight, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    # fp16 range safety: rescale weight (per output channel) and styles (per sample) to max |.| ~ 1.
    # Demodulation divides the same factors back out, so the result is unchanged up to eps.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw)
                           / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)

    # Per-sample weights and demodulation coefficients (computed in float32).
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)   # [NOIkk]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()            # [NO]
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)                    # [NOIkk]

    # Non-fused: scale activations by the styles, convolve with the shared weight, scale outputs.
    # Cheaper in training (the shared weight's gradient is one conv), so it is the training default.
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample.conv2d_resample(x=x, w=weight.to(x.dtype), f=resample_filter, up=up, down=down,
                                            padding=padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            return fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    # Fused: fold the batch into the channel axis and run one grouped convolution (groups = N).
    x = x.reshape(1, -1, *x.shape[2:])                                     # [1, N*I, H, W]
    w = w.reshape(-1, in_channels, kh, kw)                                 # [N*O, I, k, k]
    x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=resample_filter, up=up, down=down,
                                        padding=padding, groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])                            # [NOHW]
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ----------------------------------------------------------------------------
# Equalised-learning-rate layers.


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """y = act(x @ (weight * lr_multiplier / sqrt(in))^T + bias * lr_multiplier) * act_gain."""

    def __init__(self,
        in_features,            # number of input features
        out_features,           # number of output features
        bias=True,              # add a learned bias?
        activation='linear',    # bias_act activation name
        lr_multiplier=1,        # learning-rate multiplier (equalised lr)
        bias_init=0,            # initial value of the (effective) bias
    ):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        misc.assert_shape(x, [None, self.weight.shape[1]])
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self):
        return f'in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, activation={self.activation}'


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Conv with optional FIR up/downsampling, bias, activation and clamp (equalised lr)."""

    def __init__(self,
        in_channels,                    # input channels
        out_channels,                   # output channels
        kernel_size,                    # width and height of the kernel
        bias=True,                      # add a learned bias?
        activation='linear',            # bias_act activation name
        up=1,                           # integer upsampling factor
        down=1,                         # integer downsampling factor
        resample_filter=[1, 3, 3, 1],   # low-pass filter for resampling
        conv_clamp=None,                # clamp outputs to +-this (None = no clamp)
        channels_last=False,            # store the weight channels-last?
        trainable=True,                 # False = weight/bias are buffers (Freeze-D)
    ):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer('weight', weight)
            if bias is not None:
                self.register_buffer('bias', bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        misc.assert_shape(x, [None, self.weight.shape[1], None, None])
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # up=2 layers are true convolutions (flipped kernel, as upstream), everything else is correlation.
        x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up,
                                            down=self.down, padding=self.padding, flip_weight=(self.up == 1))
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


# ----------------------------------------------------------------------------
# Generator.


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """z (and c) -> w: normalised latent, optional class embedding, `num_layers` FC layers (StyleGAN f)."""

    def __init__(self,
        z_dim,                      # latent size (0 = no latent)
        c_dim,                      # conditioning label size (0 = unconditional)
        w_dim,                      # intermediate latent size
        num_ws,                     # copies of w to output; None = output [N, w_dim] and no w_avg
        num_layers=8,               # number of FC layers
        embed_features=None,        # label embedding size (None = w_dim)
        layer_features=None,        # hidden layer width (None = w_dim)
        activation='lrelu',         # activation of every FC layer
        lr_multiplier=0.01,         # learning-rate multiplier of the FC layers
        w_avg_beta=0.995,           # decay of the running w average (None = no tracking)
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def _tracks_w_avg(self):
        return self.num_ws is not None and self.w_avg_beta is not None

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        """Map latents to W.

        Args:
            z: [N, z_dim] latents (ignored when z_dim == 0).
            c: [N, c_dim] labels (ignored when c_dim == 0).
            truncation_psi: w <- w_avg + psi * (w - w_avg); 1 = no truncation.
            truncation_cutoff: truncate only the first this many ws (None = all).
            skip_w_avg_update: do not update w_avg even in training mode (style-mixing second pass).

        Returns:
            [N, num_ws, w_dim], or [N, w_dim] when num_ws is None.
        """
        # Embed, normalise and concatenate the inputs.
        x = None
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        # Running average of w (used by truncation): w_avg <- beta * w_avg + (1 - beta) * mean_batch(w).
        if self._tracks_w_avg() and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        # Truncation trick: pull w towards w_avg.
        if truncation_psi != 1:
            if not self._tracks_w_avg():
                raise ValueError('truncation needs w_avg, which this mapping network does not track')
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self):
        return f'z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}'


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv + noise + bias + activation; conv0 of each block upsamples by 2."""

    def __init__(self,
        in_channels,                    # input channels
        out_channels,                   # output channels
        w_dim,                          # intermediate latent size
        resolution,                     # output resolution
        kernel_size=3,                  # convolution kernel size
        up=1,                           # integer upsampling factor
        use_noise=True,                 # per-pixel noise input?
        activation='lrelu',             # bias_act activation name
        resample_filter=[1, 3, 3, 1],   # low-pass filter for upsampling
        conv_clamp=None,                # clamp outputs to +-this (None = no clamp)
        channels_last=False,            # store the weight channels-last?
    ):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # No weight gain: demodulation normalises the weight's scale (as upstream: the modulated weight is divided by its norm).
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.weight.shape[1], in_resolution, in_resolution])
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up,
                             padding=self.padding, resample_filter=self.resample_filter,
                             flip_weight=(self.up == 1), fused_modconv=fused_modconv)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain,
                                 clamp=act_clamp)


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation or noise."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x, w, fused_modconv=True):
        # The equalised-lr gain goes on the styles (equivalent, and keeps the weight unscaled).
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: [const | upsampling conv0] -> conv1 -> [torgb]."""

    def __init__(self,
        in_channels,                        # input channels, 0 = first block (learned constant)
        out_channels,                       # output channels
        w_dim,                              # intermediate latent size
        resolution,                         # resolution of this block
        img_channels,                       # output image channels
        is_last,                            # is this the last block?
        architecture='skip',                # 'orig', 'skip' or 'resnet'
        resample_filter=[1, 3, 3, 1],       # low-pass filter for upsampling
        conv_clamp=None,                    # clamp conv outputs to +-this (None = no clamp)
        use_fp16=False,                     # compute in fp16 (on CUDA)?
        fp16_channels_last=False,           # channels-last memory format with fp16?
        **layer_kwargs,                     # passed on to SynthesisLayer
    ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        """Args: x [N, in, r/2, r/2] or None; img [N, img_channels, r/2, r/2] or None; ws [N, num_conv+num_torgb, w_dim].

        Returns:
            (x [N, out, r, r] in the block's dtype, img [N, img_channels, r, r] float32 or None).
        """
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = _compute_dtype(self.use_fp16, force_fp32, ws.device)
        memory_format = _memory_format(self.channels_last, dtype)
        if fused_modconv is None:
            # Fused is faster for inference; the non-fused form is cheaper to differentiate. fp16 with
            # N > 1 stays non-fused (grouped fp16 convs are slow).
            fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        # Input: the learned constant or the previous block's features.
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)

        # Main layers.
        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=SQRT_HALF)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=SQRT_HALF, **layer_kwargs)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        # Image path: upsample the running image and add this block's RGB output (float32).
        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        return x, img


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """w [N, num_ws, w_dim] -> image [N, img_channels, R, R], one SynthesisBlock per resolution 4..R."""

    def __init__(self,
        w_dim,                  # intermediate latent size
        img_resolution,         # output resolution (power of two >= 4)
        img_channels,           # output image channels
        channel_base=32768,     # channels(r) = min(channel_base // r, channel_max)
        channel_max=512,
        num_fp16_res=0,         # run the highest this many resolutions in fp16 (CUDA)
        **block_kwargs,         # passed on to SynthesisBlock
    ):
        if not (img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0):
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        # num_ws: every conv takes one w; each torgb shares its w with the next block's conv0, so only
        # the last torgb adds one: num_ws = 2 * log2(R) - 2.
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = (res == self.img_resolution)
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last,
                                   use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def forward(self, ws, **block_kwargs):
        """Args: ws [N, num_ws, w_dim]; block_kwargs: force_fp32, fused_modconv, noise_mode.

        Returns:
            [N, img_channels, R, R] float32 image.
        """
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        block_ws = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv

        x = img = None
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            x, img = getattr(self, f'b{res}')(x, img, cur_ws, **block_kwargs)
        return img

    def extra_repr(self):
        return f'w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}'


@persistence.persistent_class
class Generator(torch.nn.Module):
    """StyleGAN2 generator: mapping (z, c -> ws) followed by synthesis (ws -> image)."""

    def __init__(self,
        z_dim,                  # latent size
        c_dim,                  # conditioning label size (0 = unconditional)
        w_dim,                  # intermediate latent size
        img_resolution,         # output resolution
        img_channels,           # output image channels
        mapping_kwargs={},      # passed on to MappingNetwork
        synthesis_kwargs={},    # passed on to SynthesisNetwork
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Registration order matters for the parameter listing: synthesis first, then mapping.
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        """Args: z [N, z_dim], c [N, c_dim]; synthesis_kwargs: noise_mode, force_fp32, fused_modconv.

        Returns:
            [N, img_channels, R, R] float32 image, roughly in [-1, 1].
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------
# Discriminator.


@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: [fromrgb] -> conv0 -> conv1 (down 2) [+ 1x1 skip for resnet]."""

    def __init__(self,
        in_channels,                        # input channels, 0 = first block (reads the image)
        tmp_channels,                       # channels of the intermediate layers
        out_channels,                       # output channels
        resolution,                         # resolution of this block
        img_channels,                       # input image channels
        first_layer_idx,                    # index of this block's first layer (Freeze-D counting)
        architecture='resnet',              # 'orig', 'skip' or 'resnet'
        activation='lrelu',                 # bias_act activation name
        resample_filter=[1, 3, 3, 1],       # low-pass filter for downsampling
        conv_clamp=None,                    # clamp conv outputs to +-this (None = no clamp)
        use_fp16=False,                     # compute in fp16 (on CUDA)?
        fp16_channels_last=False,           # channels-last memory format with fp16?
        freeze_layers=0,                    # layers with index < this are frozen (buffers)
    ):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f'in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}')
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_layers = 0

        def trainable():
            # Freeze-D (Mo et al. 2020): layers are numbered across D from the highest resolution,
            # fromrgb and skip included; a frozen layer keeps its tensors as buffers.
            layer_idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return layer_idx >= freeze_layers

        common = dict(conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, **common)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        """Args: x [N, in, r, r] or None; img [N, img_channels, r, r] or None.

        Returns:
            (x [N, out, r/2, r/2] in the block's dtype, img [N, img_channels, r/2, r/2] for skip else None).
        """
        device = (x if x is not None else img).device
        dtype = _compute_dtype(self.use_fp16, force_fp32, device)
        memory_format = _memory_format(self.channels_last, dtype)

        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        # Image input.
        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        # Main layers.
        if self.architecture == 'resnet':
            y = self.skip(x, gain=SQRT_HALF)
            x = self.conv0(x)
            x = self.conv1(x, gain=SQRT_HALF)
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)

        assert x.dtype == dtype
        return x, img


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Append the per-group standard deviation of the features as extra channels (Karras et al. 2018).

    Groups are strided: sample k belongs to group k mod (N / G) (as upstream's reshape to [G, N/G, ...]).
    """

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        G = N if self.group_size is None else min(int(self.group_size), int(N))
        F = self.num_channels
        c = C // F
        if N % G != 0:
            raise ValueError(f'minibatch-stddev: batch size {N} is not divisible by the group size {G}')

        y = x.reshape(G, -1, F, c, H, W)      # [GnFcHW]: sample g*n + j is member g of group j
        y = y - y.mean(dim=0)                 # deviation from the group mean
        y = y.square().mean(dim=0)            # [nFcHW] population variance
        y = (y + 1e-8).sqrt()                 # [nFcHW] std
        y = y.mean(dim=[2, 3, 4])             # [nF] averaged over channels and pixels
        y = y.reshape(-1, F, 1, 1)            # [nF11]
        y = y.repeat(G, 1, H, W)              # [NFHW] same strided layout as the input
        return torch.cat([x, y], dim=1)

    def extra_repr(self):
        return f'group_size={self.group_size}, num_channels={self.num_channels}'


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head of D: [fromrgb] -> mbstd -> conv -> fc -> out (projected onto cmap if conditional)."""

    def __init__(self,
        in_channels,                # input channels
        cmap_dim,                   # conditioning projection size, 0 = unconditional
        resolution,                 # resolution of this block (4)
        img_channels,               # input image channels
        architecture='resnet',      # 'orig', 'skip' or 'resnet'
        mbstd_group_size=4,         # minibatch-stddev group size (None = whole batch)
        mbstd_num_channels=1,       # minibatch-stddev features (0 = off)
        activation='lrelu',         # bias_act activation name
        conv_clamp=None,            # clamp conv outputs to +-this (None = no clamp)
    ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution ** 2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        """Args: x [N, in, 4, 4]; img (skip only) [N, img_channels, 4, 4]; cmap [N, cmap_dim] or None.

        Returns:
            [N, 1] float32 logits.
        """
        del force_fp32  # the epilogue always runs in float32
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))

        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)

        # Projection discriminator (Miyato & Koyama 2018): <out, cmap> / sqrt(cmap_dim).
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        assert x.dtype == torch.float32
        return x


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """StyleGAN2 discriminator: blocks R..8, then the 4x4 epilogue; conditional via a projection."""

    def __init__(self,
        c_dim,                  # conditioning label size (0 = unconditional)
        img_resolution,         # input resolution (power of two >= 4)
        img_channels,           # input image channels
        architecture='resnet',  # 'orig', 'skip' or 'resnet'
        channel_base=32768,     # channels(r) = min(channel_base // r, channel_max)
        channel_max=512,
        num_fp16_res=0,         # run the highest this many resolutions in fp16 (CUDA)
        conv_clamp=None,        # clamp conv outputs to +-this (None = no clamp)
        cmap_dim=None,          # conditioning projection size (None = channels at 4x4)
        block_kwargs={},        # passed on to DiscriminatorBlock
        mapping_kwargs={},      # passed on to MappingNetwork (conditional only)
        epilogue_kwargs={},     # passed on to DiscriminatorEpilogue
    ):
        if not (img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0):
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=(res >= fp16_resolution),
                                       **block_kwargs, **common)
            setattr(self, f'b{res}', block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(self, img, c, **block_kwargs):
        """Args: img [N, img_channels, R, R]; c [N, c_dim]; block_kwargs: force_fp32.

        Returns:
            [N, 1] float32 logits.
        """
        misc.assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution])
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, **block_kwargs)
        cmap = None
        if self.c_dim > 0:
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)

    def extra_repr(self):
        return f'c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}'
