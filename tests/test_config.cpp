#include <gtest/gtest.h>

#include <map>

#include "noprop/config.h"
#include "noprop/util.h"
#include "test_util.h"

using namespace noprop;
using noprop::test::error_of;

TEST(Config, YamlOverridesDefaults) {
  Config c;
  apply_yaml(c, "batch_size: 64\nlearning_rate: 2e-3\nearly_stopping: true\narchitecture: seed\n", "x.yaml");
  EXPECT_EQ(c.batch_size, 64);
  EXPECT_DOUBLE_EQ(c.learning_rate, 2e-3);
  EXPECT_TRUE(c.early_stopping);
  EXPECT_EQ(c.architecture, "seed");
  EXPECT_EQ(c.epochs, 100);  // untouched default
}

TEST(Config, UnknownKeySuggestsClosest) {
  Config c;
  auto msg = error_of([&] { apply_yaml(c, "lerning_rate: 0.1\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("cfg.yaml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown config key 'lerning_rate'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'learning_rate'"), std::string::npos) << msg;
}

TEST(Config, WrongTypeNamesKey) {
  Config c;
  auto msg = error_of([&] { apply_yaml(c, "batch_size: lots\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("'batch_size': expected an integer, got 'lots'"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "epochs: 1.5\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("'epochs': expected an integer"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "augment: maybe\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("'augment': expected true or false"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "eta: [1, 2]\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("'eta': expected a number"), std::string::npos) << msg;
}

TEST(Config, OutOfRangeAndBadChoice) {
  Config c;
  auto msg = error_of([&] { apply_yaml(c, "learning_rate: -1\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("'learning_rate': must be between"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "dropout: 1.5\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("'dropout'"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "embedding: onehot\n", "cfg.yaml"); });
  EXPECT_NE(msg.find("did you mean 'one-hot'"), std::string::npos) << msg;
  EXPECT_EQ(c.embedding, "one-hot");  // a rejected value leaves the key as it was
}

TEST(Config, MalformedYamlAndDuplicates) {
  Config c;
  auto msg = error_of([&] { apply_yaml(c, "batch_size: [1,\n", "bad.yaml"); });
  EXPECT_NE(msg.find("bad.yaml: invalid YAML"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "- 1\n- 2\n", "list.yaml"); });
  EXPECT_NE(msg.find("expected a mapping"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "seed: 1\nseed: 2\n", "dup.yaml"); });
  EXPECT_NE(msg.find("'seed' given twice"), std::string::npos) << msg;
}

TEST(Config, SetOverrides) {
  Config c;
  apply_override(c, "num_layers=4");
  apply_override(c, "block_order=sequential");
  apply_override(c, "weight_decay=0");
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.block_order, "sequential");
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.0);
  EXPECT_NE(error_of([&] { apply_override(c, "num_layers"); }).find("expected key=value"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "num_layer=3"); }).find("did you mean 'num_layers'"), std::string::npos);
}

TEST(Config, ValidateRelations) {
  Config c;
  c.noise_schedule_min = 0.4, c.noise_schedule_max = 0.3 + 0.2;
  EXPECT_NO_THROW(validate(c));
  c.device = "tpu";
  EXPECT_NE(error_of([&] { validate(c); }).find("'device'"), std::string::npos);
  c = Config{};
  apply_override(c, "concurrent_blocks=1");
  EXPECT_NO_THROW(validate(c));
  apply_override(c, "concurrent_blocks=2");
  EXPECT_NE(error_of([&] { validate(c); }).find("'concurrent_blocks'"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "kernels=fast"); }).find("kernels"), std::string::npos);
}

TEST(Config, RoundTripsThroughYaml) {
  Config c;
  apply_yaml(c, "batch_size: 32\nembedding: learned\nhead: radial\nseed: 7\n", "a.yaml");
  Config d;
  apply_yaml(d, to_yaml(c), "b.yaml");
  EXPECT_EQ(to_yaml(c), to_yaml(d));
  EXPECT_EQ(d.batch_size, 32);
  EXPECT_EQ(d.head, "radial");
}

// Every shipped config parses, validates and has a description line.
TEST(Config, ShippedConfigsLoad) {
  auto all = list_named_configs();
  ASSERT_GE(all.size(), 9u);
  for (const auto& nc : all) {
    Config c;
    EXPECT_NO_THROW(c = load_config_file(nc.path)) << nc.name;
    EXPECT_NO_THROW(validate(c)) << nc.name;
    EXPECT_FALSE(nc.description.empty()) << nc.name;
  }
  EXPECT_EQ(find_named_config("mnist-dt").stem(), "mnist-dt");
  EXPECT_NE(error_of([&] { find_named_config("mnist-td"); }).find("did you mean 'mnist-dt'"), std::string::npos);
}

// The continuous-time configs carry Table 3's settings: Adam, lr 1e-3, batch 128, the data
// set's epochs, η = 1 for CT, 1000 inference steps, and the embedding their name says.
TEST(Config, ContinuousConfigsFollowTable3) {
  const std::map<std::string, int> epochs{{"mnist", 100}, {"fashion-mnist", 100}, {"cifar10", 500}, {"cifar100", 1000}};
  for (const auto& [ds, ep] : epochs) {
    for (std::string m : {"ct", "fm"}) {
      for (std::string suffix : {"", "-dim20", "-prototype"}) {
        const std::string name = ds + "-" + m + suffix;
        Config c = load_config_file(find_named_config(name));
        EXPECT_EQ(c.dataset, ds) << name;
        EXPECT_EQ(c.method, m) << name;
        EXPECT_EQ(c.optimizer, "adam") << name;
        EXPECT_EQ(c.epochs, ep) << name;
        EXPECT_EQ(c.batch_size, 128) << name;
        EXPECT_DOUBLE_EQ(c.learning_rate, 1e-3) << name;
        EXPECT_EQ(c.inference_steps, 1000) << name;
        EXPECT_EQ(c.architecture, "paper") << name;
        if (m == "ct") {
          EXPECT_DOUBLE_EQ(c.eta, 1.0) << name;
        }
        EXPECT_EQ(c.embedding, suffix.empty() ? "one-hot" : suffix == "-dim20" ? "learned" : "prototype") << name;
        if (suffix == "-dim20") {
          EXPECT_EQ(c.embedding_dim, 20) << name;
        }
      }
      EXPECT_NO_THROW(find_named_config(ds + "-" + m + "-quick"));
    }
  }
}

// Typos in names: a swap of two neighbouring characters is one edit.
TEST(Util, EditDistanceCountsSwapsOnce) {
  EXPECT_EQ(edit_distance("mnist-td", "mnist-dt"), 1u);
  EXPECT_EQ(edit_distance("mnist-td", "mnist-fm"), 2u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("ab", "ba"), 1u);
  EXPECT_EQ(closest_match("mnist-td", {"mnist-ct", "mnist-dt", "mnist-fm"}), "mnist-dt");
}

// Found by fuzzing: a mapping or sequence used as a key is a one-line error, not an escaping
// YAML exception.
TEST(Config, NonScalarKeyIsAnError) {
  Config c;
  EXPECT_NE(error_of([&] { apply_yaml(c, "[a, b]: 1\n", "k.yaml"); }).find("k.yaml: config keys must be plain names"),
            std::string::npos);
  EXPECT_NE(error_of([&] { apply_yaml(c, "? {x: 1}\n: 2\n", "k.yaml"); }).find("config keys must be plain names"),
            std::string::npos);
}
