"""What the compiler makes of the Triton kernels for Hopper, read without a GPU.

    python benchmarks/triton_sass.py [--json PATH]

Compiles add_directions_ and directions_sq_norm ahead of time for sm_90
(triton.compile with a CUDA target: no GPU or driver needed), with the
specialisations a launch gets (16-byte aligned pointers; n, q_first and start
flagged divisible by 16 where they are), and reads the machine code with the
cuobjdump that Triton's wheel carries. Per case: registers, stack (local
memory), the global loads and stores by width, and per element the
instructions, the special-function ones (MUFU) and the wide and high integer
multiplies (Philox). "run" leaves out sin's and cos's large-argument branch,
which Box-Muller never takes (count_ops); "all" is every instruction. A thread covers
4 * BLOCK_Q / (32 * num_warps) elements; apart from that branch every case
but K = 4 is straight-line code, so its counts are exact per element (K = 4's
loop body runs 4 times: its counts are a lower bound).

From these it prints floors for 1e8 elements on an H200, leads to test on
the device, not readings: memory, 8 bytes per element at the 4.3 TB/s copy
that KINDS.md records; issue, instructions / (132 SMs x 4 schedulers x 32
lanes x 1.98 GHz); MUFU, at 16 per clock per SM. The largest is what the
kernel can reach; a kernel whose issue or MUFU floor is near the memory floor
cannot run at the copy's speed.
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from zosam_kernels.ops import triton_kernels as tk

import harness

H200 = dict(sms=132, clock_hz=1.98e9, copy_bytes_per_s=4.3e12, mufu_per_clock=16)
N_FLOOR = 10**8
ALIGNED = [["tt.divisibility", 16]]

# name, kernel, n, stream offset, K, masked
CASES = [
    ("add K=1, n % 16 = 0", "add", 10_000_000, 0, 1, False),
    ("add K=1, n % 16 = 0, masked", "add", 10_000_000, 0, 1, True),
    ("add K=1, ResNet-32's n = 464154", "add", 464_154, 0, 1, False),
    ("add K=1, stream offset 1", "add", 10_000_000, 1, 1, False),
    ("add K=4, n % 16 = 0", "add", 10_000_000, 0, 4, False),
    ("sq_norm K=1, n % 16 = 0", "sq_norm", 10_000_000, 0, 1, False),
]


def _tool(name):
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: this script needs the {name} that Triton's Linux wheel carries")
    return path


def compile_case(kernel, n, offset, k, masked, num_warps):
    """The cubin of one specialisation, as a launch with these arguments would compile it."""
    fn = tk._add_directions_kernel if kernel == "add" else tk._sq_norm_partials_kernel
    q_first, start = divmod(offset, 4)
    pointers = (["theta_ptr"] if kernel == "add" else ["partials_ptr"]) + ["seeds_ptr", "coefs_ptr"]
    types = dict(theta_ptr="*fp32", partials_ptr="*fp32", seeds_ptr="*i64", coefs_ptr="*fp32",
                 mask_ptr="*u8", n="i64", q_first="i64", start="i64")
    constants = dict(base_ptr=None, scale_ptr=None, K=k, HAS_MASK=masked, HAS_SCALE=False, SCALE_POWER=1,
                     HAS_BASE=False, BLOCK_Q=tk.BLOCK_Q)
    if masked:
        pointers.append("mask_ptr")
    else:
        constants["mask_ptr"] = None
    constants = {a: v for a, v in constants.items() if a in fn.arg_names}
    signature = {a: "constexpr" if a in constants else types[a] for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): ALIGNED for a in pointers}
    attrs.update({(fn.arg_names.index(a),): ALIGNED
                  for a, v in (("n", n), ("q_first", q_first), ("start", start)) if v % 16 == 0})
    src = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    options = dict(tk._LAUNCH_OPTIONS, num_warps=num_warps)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]


def read_cubin(cubin):
    """(registers, stack bytes, opcode counts of all, of what runs) of a cubin's one kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "--dump-sass", f.name],
                              capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    return regs, stack, *count_ops(sass)


LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def count_ops(sass):
    """Opcode counts of the whole kernel, and of what runs for Box-Muller's
    angles. sin and cos (libdevice) branch, for |x| >= 105615, to a
    Payne-Hanek reduction with a table in global memory and an array in local
    memory; the angle 2 pi u is below 2 pi, so that branch never runs. In the
    machine code it is a BSSY ... BSYNC region holding local stores (STL):
    everything after the region's first predicated branch to its BSYNC is
    left out of "run" (our kernels use local memory nowhere else)."""
    lines = [(int(a, 16), bool(p), op, rest) for a, p, op, rest in LINE.findall(sass) if op != "NOP"]
    slow = set()
    for k, (addr, _, op, rest) in enumerate(lines):
        if op != "BSSY":
            continue
        end = int(rest.split()[-1], 16)
        region = [line for line in lines[k + 1:] if line[0] < end]
        if not any(line[2] == "STL" for line in region):
            continue
        # BSSY names the address after the BSYNC, which the branch targets
        branch = next(a for a, pred, o, r in region
                      if o == "BRA" and pred and end - 0x10 <= int(r.split()[-1], 16) <= end)
        slow.update(a for a, *_ in region if a > branch)
    every = collections.Counter(op for _, _, op, _ in lines)
    run = collections.Counter(op for addr, _, op, _ in lines if addr not in slow)
    return every, run


def summarise(name, regs, stack, every, run, per_thread):
    def count(prefix):
        return sum(c for op, c in run.items() if op.startswith(prefix))
    access = {op: c for op, c in sorted(run.items()) if op.startswith(("LDG", "STG", "LDL", "STL"))}
    total, mufu, imul = sum(run.values()), count("MUFU"), count("IMAD.WIDE") + count("IMAD.HI")
    issue_s = total / per_thread * N_FLOOR / (H200["sms"] * 4 * 32 * H200["clock_hz"])
    mufu_s = mufu / per_thread * N_FLOOR / (H200["sms"] * H200["mufu_per_clock"] * H200["clock_hz"])
    memory_s = 8 * N_FLOOR / H200["copy_bytes_per_s"]
    return dict(case=name, registers=regs, stack_bytes=stack, elements_per_thread=per_thread,
                accesses=access, static_instructions_per_element=sum(every.values()) / per_thread,
                instructions_per_element=total / per_thread,
                mufu_per_element=mufu / per_thread, philox_multiplies_per_element=imul / per_thread,
                floor_ms=dict(memory=1e3 * memory_s, issue=1e3 * issue_s, mufu=1e3 * mufu_s))


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--num-warps", type=int, default=tk.NUM_WARPS)
    args = p.parse_args(argv)
    if not isinstance(tk._add_directions_kernel, triton.runtime.JITFunction):
        p.error("the kernels were loaded for Triton's interpreter: unset TRITON_INTERPRET")
    per_thread = 4 * tk.BLOCK_Q // (32 * args.num_warps)
    print(f"triton {triton.__version__}, sm_90, BLOCK_Q {tk.BLOCK_Q}, num_warps {args.num_warps}, "
          f"{per_thread} elements per thread; floors for 1e8 elements on an H200")
    print("| case | regs | stack B | global accesses per thread, run | instr / elem, all / run | "
          "MUFU / elem | IMAD.WIDE+HI / elem | floor ms: memory / issue / MUFU |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | --- |")
    rows = []
    for name, kernel, n, offset, k, masked in CASES:
        row = summarise(name, *read_cubin(compile_case(kernel, n, offset, k, masked, args.num_warps)), per_thread)
        rows.append(row)
        f = row["floor_ms"]
        print(f"| {name} | {row['registers']} | {row['stack_bytes']} | "
              f"{', '.join(f'{op} {c}' for op, c in row['accesses'].items())} | "
              f"{row['static_instructions_per_element']:.1f} / {row['instructions_per_element']:.1f} | "
              f"{row['mufu_per_element']:.2f} | "
              f"{row['philox_multiplies_per_element']:.1f} | "
              f"{f['memory']:.3f} / {f['issue']:.3f} / {f['mufu']:.3f} |", flush=True)
    harness.save(args, rows, triton=triton.__version__, block_q=tk.BLOCK_Q, num_warps=args.num_warps, h200=H200)


if __name__ == "__main__":
    main()
