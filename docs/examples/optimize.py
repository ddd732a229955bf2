import sys

from shipyard.optimize import optimize

repository = sys.argv[1] if len(sys.argv) > 1 else "model-repository"
result = optimize(repository, "digits:2", preset_name="int8-static",
                  eval_data="zoo:digits", calibrate="zoo:digits-train")
delta = result.report["deltas"]["vs_parent"]
print(f"digits:{result.manifest.version}: size x{delta['size_ratio']:.2f}, "
      f"accuracy {100 * delta['accuracy']:+.2f} points")
