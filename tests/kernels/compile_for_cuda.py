"""Every compile check (cuda_compile_check.py, quant_linear_compile_check.py, attention_compile_check.py) in one
process: Python, torch and triton's backend start once, not once per group (tens of seconds each on a slow machine).

Run as a script WITHOUT TRITON_INTERPRET (`[arch]`). One line per group after its output, `<group>: ok` or
`<group>: FAILED`; a group that raises is reported and the next one still runs. Exit code 0 when all pass, 77 when
this triton has no CUDA backend, 2 under TRITON_INTERPRET, 1 otherwise.
"""
import sys
import traceback

import attention_compile_check
import cuda_compile_check
import quant_linear_compile_check

GROUPS = {"elementwise": cuda_compile_check, "quant-linear": quant_linear_compile_check,
          "attention": attention_compile_check}


def main(arch: int = 90) -> int:
    failed = False
    for name, module in GROUPS.items():
        try:
            code = module.main(arch)
        except Exception:
            traceback.print_exc()
            code = 1
        if code in (2, 77):  # the process cannot compile at all: the same for every group
            return code
        print(f"{name}: {'ok' if code == 0 else 'FAILED'}", flush=True)
        failed |= code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
