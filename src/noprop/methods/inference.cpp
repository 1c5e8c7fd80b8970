#include "noprop/methods/inference.h"

#include <utility>
#include <vector>

#include "noprop/config.h"
#include "noprop/util.h"

namespace noprop {
namespace {
template <class E>
using Names = std::vector<std::pair<E, std::string>>;
const Names<Solver> kSolvers{{Solver::euler, "euler"}, {Solver::heun, "heun"}};
const Names<Sampler> kSamplers{{Sampler::ancestral, "ancestral"}, {Sampler::flow, "flow"}};
const Names<Readout> kReadouts{{Readout::blocks, "blocks"}, {Readout::head, "head"}};

template <class E>
std::string name_of(const Names<E>& names, E v) {
  for (const auto& [e, n] : names)
    if (e == v) return n;
  return "?";
}
template <class E>
E parse(const Names<E>& names, const std::string& name, const std::string& what) {
  std::vector<std::string> valid;
  for (const auto& [e, n] : names) {
    if (n == name) return e;
    valid.push_back(n);
  }
  throw Error("unknown " + what + " '" + name + "' (" + join(valid, " or ") + ")");
}
}  // namespace

std::string to_string(Solver v) { return name_of(kSolvers, v); }
std::string to_string(Sampler v) { return name_of(kSamplers, v); }
std::string to_string(Readout v) { return name_of(kReadouts, v); }
Solver parse_solver(const std::string& name) { return parse(kSolvers, name, "ODE solver"); }
Sampler parse_sampler(const std::string& name) { return parse(kSamplers, name, "CT sampler"); }
Readout parse_readout(const std::string& name) { return parse(kReadouts, name, "readout"); }

InferenceOptions inference_options(const Config& cfg) {
  return InferenceOptions{cfg.inference_noise, cfg.inference_steps, parse_solver(cfg.solver),
                          parse_sampler(cfg.ct_sampler), parse_readout(cfg.readout)};
}

}  // namespace noprop
