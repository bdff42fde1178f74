#!/usr/bin/env bash
# The staking walk-through on anvil: the README's "Staking, earning and claiming" story on a
# JSON-RPC chain, every step done with the project's own commands (and `cast` where a
# newcomer would use it), printed as it happens.
#
#   1. anvil (Osaka rules: P256VERIFY) and `gridshare-deploy --epoch-s 20`;
#   2. the owner funds the reward pool and appoints a verifier; two households get tokens;
#   3. `market-engine serve` with `[chain] backend = "rpc"`: two homes (a simulated PV inverter
#      and a simulated consumer, each read by `meter-agent run`) trade by rule in 15-second
#      slots; every settled slot goes to anvil as a batch with its local sales;
#   4. each household registers its meter (signed by the meter key), the verifier attests it,
#      the household stakes and makes the engine its delegate; the engine proves each epoch;
#   5. the seller claims its vested reward with `gridshare claim`;
#   6. a cheating meter — two meter agents on one meter key, each reading its own simulated
#      inverter, so the key signs counters that go backwards — is slashed by the engine's
#      watcher, which earns the reporter's share.
#
# Usage: scripts/walkthrough-anvil.sh            (builds the binaries first)
#   WALKTHROUGH_NO_BUILD=1  use the binaries already in ${CARGO_TARGET_DIR:-target}/debug
#   WALKTHROUGH_DIR=<dir>   keep the keys, configs and logs there (default: a temporary dir)
#   WALKTHROUGH_PORT=<n>    first of the seven local ports used (default 28545)
# Needs bash, curl, jq and `npm ci` in contracts/ (anvil and cast). Takes about five minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
if [ -z "${WALKTHROUGH_NO_BUILD:-}" ]; then
  cargo build --workspace --bins --features meter-agent/demo
fi
for b in gridshare gridshare-deploy market-engine meter-agent; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (build with --features meter-agent/demo)" >&2; exit 1; }
done
"$BIN/meter-agent" simulate-device --help >/dev/null 2>&1 \
  || { echo "$BIN/meter-agent lacks simulate-device: build with --features meter-agent/demo" >&2; exit 1; }
FOUNDRY="$ROOT/contracts/node_modules/@foundry-rs"
ANVIL="$FOUNDRY/anvil-linux-amd64/bin/anvil"
CAST="$FOUNDRY/cast-linux-amd64/bin/cast"
[ -x "$ANVIL" ] && [ -x "$CAST" ] || { echo "run 'npm ci' in contracts/ first (anvil, cast)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }

WORK="${WALKTHROUGH_DIR:-$(mktemp -d -t gridshare-walkthrough.XXXXXX)}"
mkdir -p "$WORK"
PORT="${WALKTHROUGH_PORT:-28545}"
RPC_PORT=$PORT HTTP_PORT=$((PORT + 1)) MQTT_PORT=$((PORT + 2)) DEVICE_PORT=$((PORT + 3))
EPOCH_S=20
SPEED=60

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
say() { printf '\n==> %s\n' "$*"; }
show() { printf '    $ %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.1; done
  echo "nothing listens on port $1" >&2
  exit 1
}
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local limit=$1
  shift
  local start=$SECONDS
  until "$@"; do
    if ((SECONDS - start > limit)); then
      echo "gave up after ${limit}s waiting for: $*" >&2
      echo "--- engine log (last 40 lines)" >&2
      tail -n 40 "$WORK/engine.log" >&2 || true
      exit 1
    fi
    sleep 2
  done
}
for p in $(seq "$PORT" $((PORT + 6))); do
  if port_open "$p"; then echo "port $p is taken: set WALKTHROUGH_PORT" >&2; exit 1; fi
done

# anvil's development keys (public knowledge, from its default mnemonic).
OWNER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80   # deployer, owner, verifier, treasury
ENGINE_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d  # the market engine's operator key
SELLER_KEY=0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a  # household home-01 (PV)
BUYER_KEY=0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6   # household home-02
CHEAT_KEY=0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a   # owner of cheat-03
addr() { "$CAST" wallet address --private-key "$1"; }
OWNER=$(addr $OWNER_KEY) ENGINE=$(addr $ENGINE_KEY) SELLER=$(addr $SELLER_KEY)
BUYER=$(addr $BUYER_KEY) CHEATER=$(addr $CHEAT_KEY)
export GRIDSHARE_RPC_URL="http://127.0.0.1:$RPC_PORT" ETH_RPC_URL="http://127.0.0.1:$RPC_PORT"

say "anvil on $GRIDSHARE_RPC_URL (Osaka: the P256VERIFY precompile), files in $WORK"
"$ANVIL" --hardfork osaka --port "$RPC_PORT" --silent >"$WORK/anvil.log" 2>&1 &
PIDS+=($!)
wait_port "$RPC_PORT"

say "deploy the contracts, ${EPOCH_S}-second reward epochs; the engine's key settles"
show "gridshare-deploy --rpc-url \$GRIDSHARE_RPC_URL --operator $ENGINE --epoch-s $EPOCH_S"
GRIDSHARE_DEPLOYER_KEY=$OWNER_KEY "$BIN/gridshare-deploy" --rpc-url "$GRIDSHARE_RPC_URL" \
  --operator "$ENGINE" --epoch-s "$EPOCH_S" >"$WORK/deployment.json"
cat "$WORK/deployment.json"
NETWORK_TOKEN=$(jq -r .network_token "$WORK/deployment.json")
PAYMENT_TOKEN=$(jq -r .payment_token "$WORK/deployment.json")
export GRIDSHARE_STAKING=$(jq -r .staking "$WORK/deployment.json")
export GRIDSHARE_SETTLEMENT=$(jq -r .settlement "$WORK/deployment.json")

say "the owner funds the reward pool, pays the households their stake and appoints a verifier"
send() { "$CAST" send --private-key "$1" "${@:2}" >/dev/null; }
show "cast send \$NETWORK_TOKEN 'approve(address,uint256)' \$GRIDSHARE_STAKING 1000000ether"
send $OWNER_KEY "$NETWORK_TOKEN" 'approve(address,uint256)' "$GRIDSHARE_STAKING" 1000000ether
show "cast send \$GRIDSHARE_STAKING 'fundRewards(uint256)' 1000000ether"
send $OWNER_KEY "$GRIDSHARE_STAKING" 'fundRewards(uint256)' 1000000ether
for who in $SELLER $BUYER $CHEATER; do
  send $OWNER_KEY "$NETWORK_TOKEN" 'transfer(address,uint256)' "$who" 1000ether
done
# The payment token (a stand-in stablecoin here): home-02's wallet has some to deposit, and the
# engine's key some to deposit what the operator records as paid in off chain.
send $OWNER_KEY "$PAYMENT_TOKEN" 'transfer(address,uint256)' "$BUYER" 50000000
send $OWNER_KEY "$PAYMENT_TOKEN" 'transfer(address,uint256)' "$ENGINE" 50000000
show "cast call \$NETWORK_TOKEN 'balanceOf(address)(uint256)' $SELLER"
"$CAST" call "$NETWORK_TOKEN" 'balanceOf(address)(uint256)' "$SELLER"
show "GRIDSHARE_ACCOUNT_KEY=\$OWNER_KEY gridshare verifier $OWNER"
GRIDSHARE_ACCOUNT_KEY=$OWNER_KEY "$BIN/gridshare" verifier "$OWNER"
# The treasury (the deployer) fronts what a household cannot pay yet: keep it funded.
show "GRIDSHARE_ACCOUNT_KEY=\$OWNER_KEY gridshare account deposit 100000000000"
GRIDSHARE_ACCOUNT_KEY=$OWNER_KEY "$BIN/gridshare" account deposit 100000000000

say "market-engine serve with [chain] backend = \"rpc\", 15-second slots, epochs proven 5 s after they end"
cat >"$WORK/engine.toml" <<EOF
community = "walkthrough"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[database]
url = "sqlite://$WORK/engine.sqlite"
[mqtt]
embedded_listen = "127.0.0.1:$MQTT_PORT"
url = "mqtt://127.0.0.1:$MQTT_PORT"
[market]
slot_length_s = 15
window_opens_before_s = 600
gate_closure_before_s = 3
settlement_after_s = 4
[chain]
backend = "rpc"
rpc_url = "$GRIDSHARE_RPC_URL"
settlement_address = "$GRIDSHARE_SETTLEMENT"
staking_address = "$GRIDSHARE_STAKING"
state_file = "$WORK/chain.json"
prove_after_s = 5
prove_retry_s = 5
EOF
cat "$WORK/engine.toml" | sed -n '/\[chain\]/,$p'
GRIDSHARE_OPERATOR_KEY=$ENGINE_KEY RUST_LOG=${RUST_LOG:-info} \
  "$BIN/market-engine" serve --config "$WORK/engine.toml" >"$WORK/engine.log" 2>&1 &
PIDS+=($!)
wait_port "$HTTP_PORT"
api="http://127.0.0.1:$HTTP_PORT/api/v1"
j='content-type: application/json'
GRIDSHARE_OPERATOR_PASSWORD='walkthrough operator pass' \
  "$BIN/market-engine" operator --config "$WORK/engine.toml" --name operator >/dev/null
curl -sf -c "$WORK/op.jar" -H "$j" -d '{"name":"operator","password":"walkthrough operator pass"}' \
  "$api/sessions" >/dev/null

# Sets up one home in the engine: account, meter key, registration, the operator's approval
# (capacities scaled by the simulated devices' speed), the agent's config with the broker
# login the approval issued. Args: meter, serial, export capacity W, device port.
engine_home() {
  local meter=$1 serial=$2 export_w=$3 import_w=$4
  "$BIN/meter-agent" keygen --out "$WORK/$meter.key" >/dev/null
  local public
  public=$("$BIN/meter-agent" pubkey --key "$WORK/$meter.key" | sed -n 's/^public key: *//p')
  curl -sf -H "$j" -d "{\"name\":\"$meter\",\"password\":\"walkthrough $meter pass\"}" "$api/accounts" >/dev/null
  curl -sf -c "$WORK/$meter.jar" -H "$j" -d "{\"name\":\"$meter\",\"password\":\"walkthrough $meter pass\"}" \
    "$api/sessions" >/dev/null
  curl -sf -b "$WORK/$meter.jar" -H "$j" -d "{\"meter_id\":\"$meter\",\"public_key\":\"$public\"}" \
    "$api/meters" >/dev/null
  curl -sf -b "$WORK/op.jar" -H "$j" \
    -d "{\"export_capacity_w\":$export_w,\"import_capacity_w\":$import_w,\"manufacturer\":\"Gridshare\",\"model\":\"SIM-HYBRID\",\"serial\":\"$serial\"}" \
    "$api/meters/$meter/approval" >"$WORK/$meter.approval.json"
  echo "$public" >"$WORK/$meter.pub"
}

# Writes an agent config. Args: meter, instance name, device port.
agent_config() {
  local meter=$1 instance=$2 port=$3
  cat >"$WORK/$instance.toml" <<EOF
meter_id = "$meter"
community = "walkthrough"
key_file = "$WORK/$meter.key"
data_dir = "$WORK/$instance"
poll_interval_ms = 1000
# The simulated devices, the engine and anvil share this machine's clock.
clock_sync = "synchronised"
[modbus]
address = "127.0.0.1:$port"
[mqtt]
url = "mqtt://127.0.0.1:$MQTT_PORT"
client_id = "meter-agent-$instance"
username = "$meter"
password = "$(jq -r .mqtt.password "$WORK/$meter.approval.json")"
EOF
}

# Starts a simulated inverter. Args: port, serial, PV peak W.
device() {
  "$BIN/meter-agent" simulate-device --listen "127.0.0.1:$1" --speed "$SPEED" --serial "$2" \
    --pv-peak-w "$3" --battery-wh 0 >"$WORK/device-$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1"
}

say "two households join the engine; the operator approves their meters; each trades by rule"
# Capacities are the devices' ratings times the simulated speed: their counters run 60x.
engine_home home-01 SIM-000001 $((6000 * SPEED)) $((12000 * SPEED))
engine_home home-02 SIM-000002 $((1000 * SPEED)) $((12000 * SPEED))
engine_home cheat-03 SIM-000003 $((6000 * SPEED)) $((12000 * SPEED))

say "each household links its own wallet to its engine account: the wallet signs the engine's EIP-712 challenge"
# Args: meter, the wallet's key.
link_wallet() {
  local meter=$1 key=$2 wallet
  wallet=$(addr "$key")
  show "curl -b $meter -X POST \$api/me/wallet/challenge -d '{\"address\":\"$wallet\"}' > challenge.json"
  curl -sf -b "$WORK/$meter.jar" -H "$j" -d "{\"address\":\"$wallet\"}" "$api/me/wallet/challenge" \
    >"$WORK/$meter.challenge.json"
  jq .link "$WORK/$meter.challenge.json" >"$WORK/$meter.link.json"
  jq .open "$WORK/$meter.challenge.json" >"$WORK/$meter.open.json"
  show "cast wallet sign --private-key \$WALLET_KEY --data --from-file link.json   # LinkWallet(wallet, account, nonce)"
  local link open
  link=$("$CAST" wallet sign --private-key "$key" --data --from-file "$WORK/$meter.link.json")
  show "cast wallet sign --private-key \$WALLET_KEY --data --from-file open.json   # the contract's OpenAccount(wallet)"
  open=$("$CAST" wallet sign --private-key "$key" --data --from-file "$WORK/$meter.open.json")
  show "curl -b $meter -X POST \$api/me/wallet -d '{\"address\":…,\"nonce\":…,\"link_signature\":…,\"open_signature\":…}'"
  curl -sf -b "$WORK/$meter.jar" -H "$j" -d "{\"address\":\"$wallet\",\"nonce\":$(jq .nonce "$WORK/$meter.challenge.json"),\"link_signature\":\"$link\",\"open_signature\":\"$open\"}" \
    "$api/me/wallet" | jq -c .
}
link_wallet home-01 $SELLER_KEY
link_wallet home-02 $BUYER_KEY

say "home-02 deposits from its own wallet; the engine counts it from the contract's Deposited event"
show "cast send \$PAYMENT_TOKEN 'approve(address,uint256)' \$GRIDSHARE_SETTLEMENT 9000000   # as home-02"
send $BUYER_KEY "$PAYMENT_TOKEN" 'approve(address,uint256)' "$GRIDSHARE_SETTLEMENT" 9000000
show "cast send \$GRIDSHARE_SETTLEMENT 'deposit(uint256)' 9000000"
send $BUYER_KEY "$GRIDSHARE_SETTLEMENT" 'deposit(uint256)' 9000000
say "the operator records 1000000 home-02 paid in cash; the engine deposits it on chain for home-02 (depositFor)"
show "curl -b operator -X POST \$api/accounts/home-02/deposits -d '{\"amount\":1000000,\"reference\":\"cash-0001\"}'"
curl -sf -b "$WORK/op.jar" -H "$j" -d '{"amount":1000000,"reference":"cash-0001"}' \
  "$api/accounts/home-02/deposits" >/dev/null
funded() {
  curl -sf -b "$WORK/home-02.jar" "$api/balance" | jq -e '.balance == 10000000' >/dev/null
}
wait_for 60 funded
show "curl -b home-02 \$api/funding"
curl -sf -b "$WORK/home-02.jar" "$api/funding" | jq -c '[.funding[] | {amount, reference}]'
show "cast call \$GRIDSHARE_SETTLEMENT 'balanceOf(address)(uint256)' $BUYER"
"$CAST" call "$GRIDSHARE_SETTLEMENT" 'balanceOf(address)(uint256)' "$BUYER"
show "curl -b home-01 -X PUT \$api/meters/home-01/rule -d '{\"sell_at_least_per_kwh\":12000}'"
curl -sf -b "$WORK/home-01.jar" -X PUT -H "$j" -d '{"sell_at_least_per_kwh":12000}' \
  "$api/meters/home-01/rule" >/dev/null
show "curl -b home-02 -X PUT \$api/meters/home-02/rule -d '{\"buy_at_most_per_kwh\":25000}'"
curl -sf -b "$WORK/home-02.jar" -X PUT -H "$j" -d '{"buy_at_most_per_kwh":25000}' \
  "$api/meters/home-02/rule" >/dev/null

say "on chain: each household registers its meter (signed by the meter key), the verifier attests, the household stakes and delegates proving to the engine"
chain_home() {
  local meter=$1 key=$2 serial=$3 export_w=$4 import_w=$5
  show "GRIDSHARE_ACCOUNT_KEY=\$HOUSEHOLD_KEY gridshare register $meter --meter-key $meter.key"
  GRIDSHARE_ACCOUNT_KEY=$key "$BIN/gridshare" register "$meter" --meter-key "$WORK/$meter.key"
  show "GRIDSHARE_ACCOUNT_KEY=\$OWNER_KEY gridshare attest $meter --public-key … --serial $serial --export-w $export_w …"
  GRIDSHARE_ACCOUNT_KEY=$OWNER_KEY "$BIN/gridshare" attest "$meter" --public-key "$(cat "$WORK/$meter.pub")" \
    --manufacturer Gridshare --model SIM-HYBRID --serial "$serial" --export-w "$export_w" \
    --import-w "$import_w" --grid-point "gcp-$meter"
  show "GRIDSHARE_ACCOUNT_KEY=\$HOUSEHOLD_KEY gridshare stake $meter 150"
  GRIDSHARE_ACCOUNT_KEY=$key "$BIN/gridshare" stake "$meter" 150
  show "GRIDSHARE_ACCOUNT_KEY=\$HOUSEHOLD_KEY gridshare delegate $meter $ENGINE"
  GRIDSHARE_ACCOUNT_KEY=$key "$BIN/gridshare" delegate "$meter" "$ENGINE"
}
chain_home home-01 $SELLER_KEY SIM-000001 $((6000 * SPEED)) $((12000 * SPEED))
chain_home home-02 $BUYER_KEY SIM-000002 $((1000 * SPEED)) $((12000 * SPEED))
chain_home cheat-03 $CHEAT_KEY SIM-000003 $((6000 * SPEED)) $((12000 * SPEED))

say "the homes' simulated inverters and meter agents start (home-01 has 6 kWp of PV, home-02 none)"
device "$DEVICE_PORT" SIM-000001 6000
device $((DEVICE_PORT + 1)) SIM-000002 0
agent_config home-01 home-01 "$DEVICE_PORT"
agent_config home-02 home-02 $((DEVICE_PORT + 1))
for a in home-01 home-02; do
  show "meter-agent run --config $a.toml"
  "$BIN/meter-agent" run --config "$WORK/$a.toml" >"$WORK/$a.log" 2>&1 &
  PIDS+=($!)
done

say "waiting for the first settled slot's batch to be confirmed on anvil"
settled_on_chain() {
  curl -sf -b "$WORK/op.jar" "$api/settlements?limit=500" \
    | jq -e '[.settlements[] | select(.chain.status == "confirmed")] | length > 0' >/dev/null
}
wait_for 180 settled_on_chain
curl -sf -b "$WORK/op.jar" "$api/settlements?limit=500" \
  | jq -c '[.settlements[] | select(.chain.status == "confirmed")][0] | {slot, chain: (.chain | {status, tx_hash, block, gas_used})}'

say "waiting for the engine to prove an epoch of home-01 in which it sold to home-02"
proven() {
  curl -sf -b "$WORK/home-01.jar" "$api/meters/home-01/stake" \
    | jq -e '[.epochs[]? | select(.credited_wh > 0)] | length > 0' >/dev/null
}
wait_for 240 proven
curl -sf -b "$WORK/home-01.jar" "$api/meters/home-01/stake" \
  | jq -c '{staked, proved_by_engine, credited: [.epochs[] | select(.credited_wh > 0) | {epoch, sold_wh, exported_wh, credited_wh, reward}][0:2]}'

say "home-01 claims its reward once it has vested (one epoch's proof window and seven of vesting)"
claimable() {
  GRIDSHARE_ACCOUNT_KEY=$SELLER_KEY "$BIN/gridshare" status home-01 \
    | jq -e '.claimable != "0"' >/dev/null
}
wait_for 300 claimable
show "GRIDSHARE_ACCOUNT_KEY=\$SELLER_KEY gridshare status home-01"
GRIDSHARE_ACCOUNT_KEY=$SELLER_KEY "$BIN/gridshare" status home-01
show "GRIDSHARE_ACCOUNT_KEY=\$SELLER_KEY gridshare claim home-01"
GRIDSHARE_ACCOUNT_KEY=$SELLER_KEY "$BIN/gridshare" claim home-01 | tee "$WORK/claim.json"
jq -e '.claimed != "0"' "$WORK/claim.json" >/dev/null || { echo "nothing was claimed" >&2; exit 1; }
show "cast call \$NETWORK_TOKEN 'balanceOf(address)(uint256)' $SELLER   # 1000 - 150 staked + the reward"
"$CAST" call "$NETWORK_TOKEN" 'balanceOf(address)(uint256)' "$SELLER"
show "curl -b home-01 \$api/meters/home-01/stake | jq '{staked, claimable, paid: [.epochs[] | select(.reward != \"0\")]}'"
curl -sf -b "$WORK/home-01.jar" "$api/meters/home-01/stake" \
  | jq -c '{staked, claimable, paid: [.epochs[] | select(.reward != "0") | {epoch, sold_wh, exported_wh, credited_wh, reward}]}'

say "a cheating meter: two meter agents on cheat-03's one key, each reading its own inverter"
device $((DEVICE_PORT + 2)) SIM-000003 6000
device $((DEVICE_PORT + 3)) SIM-000003 0
agent_config cheat-03 cheat-03-a $((DEVICE_PORT + 2))
agent_config cheat-03 cheat-03-b $((DEVICE_PORT + 3))
for a in cheat-03-a cheat-03-b; do
  show "meter-agent run --config $a.toml"
  "$BIN/meter-agent" run --config "$WORK/$a.toml" >"$WORK/$a.log" 2>&1 &
  PIDS+=($!)
done
slashed() {
  GRIDSHARE_ACCOUNT_KEY=$CHEAT_KEY "$BIN/gridshare" status cheat-03 | jq -e .slashed >/dev/null
}
wait_for 120 slashed
show "grep 'meter slashed for fraud' engine.log"
grep -m1 'meter slashed for fraud' "$WORK/engine.log" | sed 's/\x1b\[[0-9;]*m//g'
show "gridshare status cheat-03"
GRIDSHARE_ACCOUNT_KEY=$CHEAT_KEY "$BIN/gridshare" status cheat-03
show "curl /metrics | grep gridshare_watcher_slashes_total"
curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | grep '^gridshare_watcher_slashes_total'
show "cast call \$NETWORK_TOKEN 'balanceOf(address)(uint256)' $ENGINE   # the reporter's share"
"$CAST" call "$NETWORK_TOKEN" 'balanceOf(address)(uint256)' "$ENGINE"

say "the books: every account's balance in the engine against the Settlement contract"
agree() {
  GRIDSHARE_OPERATOR_KEY=$ENGINE_KEY "$BIN/market-engine" settlement --config "$WORK/engine.toml" balances \
    >"$WORK/balances.txt" 2>&1
}
show "market-engine settlement --config engine.toml balances"
wait_for 30 agree
cat "$WORK/balances.txt"

say "home-01 withdraws what it earned, on chain with its own wallet: requested now, paid after the contract's delay"
earned=$(curl -sf -b "$WORK/home-01.jar" "$api/balance" | jq .available)
((earned > 0)) || { echo "home-01 earned nothing to withdraw" >&2; exit 1; }
show "cast send \$GRIDSHARE_SETTLEMENT 'requestWithdrawal(uint256)' $earned   # as home-01"
send $SELLER_KEY "$GRIDSHARE_SETTLEMENT" 'requestWithdrawal(uint256)' "$earned"
pending() {
  curl -sf -b "$WORK/home-01.jar" "$api/balance" | jq -e ".withdrawal_pending == $earned" >/dev/null
}
wait_for 30 pending
show "curl -b home-01 \$api/balance   # held back from bids, still in the balance until paid"
curl -sf -b "$WORK/home-01.jar" "$api/balance" | jq -c '{balance, withdrawal_pending, available}'
show "cast send \$GRIDSHARE_SETTLEMENT 'withdraw()'   # too early"
if "$CAST" send --private-key $SELLER_KEY "$GRIDSHARE_SETTLEMENT" 'withdraw()' >"$WORK/early.txt" 2>&1; then
  echo "withdrawn before the delay" >&2
  exit 1
fi
grep -o 'TooEarly[^"]*' "$WORK/early.txt" | head -n 1 || tail -n 1 "$WORK/early.txt"
show "cast rpc evm_increaseTime 21700 && cast rpc evm_mine   # anvil: six hours pass"
"$CAST" rpc evm_increaseTime 21700 >/dev/null
"$CAST" rpc evm_mine >/dev/null
show "cast send \$GRIDSHARE_SETTLEMENT 'withdraw()'"
send $SELLER_KEY "$GRIDSHARE_SETTLEMENT" 'withdraw()'
paid() {
  curl -sf -b "$WORK/home-01.jar" "$api/balance" | jq -e '.withdrawal_pending == 0' >/dev/null
}
wait_for 30 paid
show "cast call \$PAYMENT_TOKEN 'balanceOf(address)(uint256)' $SELLER   # in home-01's wallet"
"$CAST" call "$PAYMENT_TOKEN" 'balanceOf(address)(uint256)' "$SELLER"
show "curl -b home-01 \$api/funding"
curl -sf -b "$WORK/home-01.jar" "$api/funding" | jq -c '[.funding[] | {amount, reference}]'
show "market-engine settlement --config engine.toml balances"
wait_for 30 agree
cat "$WORK/balances.txt"

say "done: home-01 was paid for energy home-02 bought and took it out, cheat-03 lost half its stake, and the engine's books agree with the chain"
