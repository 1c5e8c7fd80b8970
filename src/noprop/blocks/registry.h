// The blocks by name: what a config's `architecture` key may say, and how to build each.
// Torch-free, so that config validation and the CLI read the same list. A new block is one file
// (its BlockImpl and/or TimeBlockImpl, blocks/block.h, and a function returning its spec) and
// one line in registry.cpp; a program or test may also register one at start-up.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace noprop {

struct BlockOptions;
struct BlockImpl;
struct TimeBlockImpl;

struct BlockSpec {
  std::string name;     // the config value: paper, seed, ...
  std::string summary;  // one line for --help and the docs
  // The discrete-time block (NoProp-DT, back-prop); empty: not offered to those methods.
  std::function<std::shared_ptr<BlockImpl>(const BlockOptions&)> make;
  // The continuous-time block (NoProp-CT, -FM); empty: not offered to those methods.
  std::function<std::shared_ptr<TimeBlockImpl>(const BlockOptions&)> make_time;
};

// Adds a block; an Error if the name is taken. Returns true, to initialise a static with.
bool register_block(BlockSpec spec);
const std::vector<BlockSpec>& block_specs();
std::vector<std::string> block_names();
// The spec of `name`; an Error naming the known ones (with a did-you-mean) otherwise.
const BlockSpec& block_spec(const std::string& name);

}  // namespace noprop
