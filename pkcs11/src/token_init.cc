#include "vecseal/pkcs11/token_init.h"

namespace vecseal::pkcs11 {

Result<std::optional<CK_SLOT_ID>> FindUninitialisedSlot(const Module& module) {
  auto slots = module.AllSlots();
  if (!slots.ok()) return std::move(slots).TakeStatus();
  for (CK_SLOT_ID slot : *slots) {
    auto info = module.TokenInfo(slot);
    if (info.ok() && (info->flags & CKF_TOKEN_INITIALIZED) == 0) {
      return std::optional<CK_SLOT_ID>(slot);
    }
  }
  return std::optional<CK_SLOT_ID>();
}

Result<CK_SLOT_ID> InitToken(const Module& module, CK_SLOT_ID slot, std::string_view label,
                             std::span<const uint8_t> so_pin, std::span<const uint8_t> user_pin) {
  VECSEAL_RETURN_IF_ERROR(module.InitToken(slot, so_pin, label));
  auto token_slot = module.FindTokenSlot(label);
  if (!token_slot.ok()) return std::move(token_slot).TakeStatus();
  auto session = Session::Open(module, *token_slot, true);
  if (!session.ok()) return std::move(session).TakeStatus();
  Status status = session->LoginSecurityOfficer(so_pin);
  if (status.ok()) {
    status = session->InitPin(user_pin);
    (void)session->Logout();
  }
  if (!status.ok()) return status;
  return *token_slot;
}

}  // namespace vecseal::pkcs11
