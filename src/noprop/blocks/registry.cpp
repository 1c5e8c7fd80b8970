#include "noprop/blocks/registry.h"

#include "noprop/registry.h"

namespace noprop {

// The built-in blocks, each defined beside its class.
BlockSpec conv_block_spec(const std::string& architecture);  // blocks/conv.cpp: paper, seed

namespace {
Registry<BlockSpec>& registry() {
  static Registry<BlockSpec> r("block architecture", {conv_block_spec("paper"), conv_block_spec("seed")});
  return r;
}
}  // namespace

bool register_block(BlockSpec spec) { return registry().add(std::move(spec)); }
const std::vector<BlockSpec>& block_specs() { return registry().all(); }
std::vector<std::string> block_names() { return registry().names(); }
const BlockSpec& block_spec(const std::string& name) { return registry().get(name); }

}  // namespace noprop
