// How a method's predict() runs inference, as typed options built from the config (or from
// `noprop eval`'s flags). Torch-free.
#pragma once

#include <string>

namespace noprop {

struct Config;

enum class Solver { euler, heun };       // the FM ODE and CT's probability flow
enum class Sampler { ancestral, flow };  // CT: Eq. 3 on the learned schedule | probability flow
enum class Readout { blocks, head };     // DT: mean of the blocks' probabilities | head on z_T

struct InferenceOptions {
  bool noise = true;  // false: z_0 = 0 and no noise on the way
  int steps = 1000;   // discretisation of t ∈ [0, 1] (CT, FM)
  Solver solver = Solver::euler;
  Sampler sampler = Sampler::ancestral;
  Readout readout = Readout::blocks;
};
// The options a config asks for (inference_noise, inference_steps, solver, ct_sampler, readout).
InferenceOptions inference_options(const Config& cfg);

// The spelling of each value in configs, flags and reports, and back; an unknown name is an
// Error that lists the valid ones.
std::string to_string(Solver v);
std::string to_string(Sampler v);
std::string to_string(Readout v);
Solver parse_solver(const std::string& name);
Sampler parse_sampler(const std::string& name);
Readout parse_readout(const std::string& name);

}  // namespace noprop
