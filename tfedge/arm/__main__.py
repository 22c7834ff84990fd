"""``python -m tfedge.arm``: prepares the ARM emulation set-up and prints it.

Run once as root (CI, a new machine); later runs only check the cache. Exit
status 0 when ready, 2 with the reason (and the fix) otherwise.
"""

import json
import sys
import time

from tfedge.arm.sysroot import ArmEmulationError, prepare


def main() -> int:
    start = time.time()
    try:
        env = prepare()
    except ArmEmulationError as err:
        print(f"tfedge.arm: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({**env.to_dict(), "seconds": round(time.time() - start, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
