// Setting up a new token: what `vecseald --dev` does with SoftHSM2, through the RAII layer of
// cryptoki.h. Production tokens are set up by their owners' tools, never by vecseal.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "vecseal/core/status.h"
#include "vecseal/pkcs11/cryptoki.h"

namespace vecseal::pkcs11 {

// The first slot whose token is not initialised, or nullopt when every token is. Slots whose
// token cannot be read are passed over.
Result<std::optional<CK_SLOT_ID>> FindUninitialisedSlot(const Module& module);

// Initialises the token in `slot` with `label` (at most 32 bytes) and `so_pin`, then, as the SO,
// sets the user PIN to `user_pin`. Returns the token's slot, found again by label: SoftHSM2
// moves an initialised token to a new slot id. The caller owns and wipes both PINs.
Result<CK_SLOT_ID> InitToken(const Module& module, CK_SLOT_ID slot, std::string_view label,
                             std::span<const uint8_t> so_pin, std::span<const uint8_t> user_pin);

}  // namespace vecseal::pkcs11
