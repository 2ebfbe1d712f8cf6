import pickle, sys, numpy as np, torch
sys.argv=['x']
src=open(__file__.replace('mlp_auroc.py', 'fit_and_score.py')).read().split('train = pickle')[0]
exec(src)
train = pickle.load(open("/tmp/regions_train.pkl", "rb")); val = pickle.load(open("/tmp/regions_val.pkl", "rb"))
X, Y, A = dataset(train); Xv, Yv, Av = dataset(val)
mean, std = X.mean(0), X.std(0)+1e-6
z = torch.tensor((X-mean)/std, dtype=torch.float32); t = torch.tensor(Y, dtype=torch.float32); sw = torch.tensor(np.sqrt(A)/np.sqrt(A).mean(), dtype=torch.float32)
zv = torch.tensor((Xv-mean)/std, dtype=torch.float32)
for hidden, wd in ((32, 1e-3), (64, 1e-2), (128, 1e-2)):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=wd)
    for ep in range(60):
        net.train()
        perm = torch.randperm(len(t))
        for i in range(0, len(t), 256):
            idx = perm[i:i+256]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z[idx])[:,0], t[idx], weight=sw[idx])
            opt.zero_grad(); loss.backward(); opt.step()
        if ep % 20 == 19:
            net.eval()
            with torch.no_grad(): s = net(zv)[:,0].numpy()
            print(hidden, wd, ep, f"AUROC area {auroc(s, Yv, Av):.3f} count {auroc(s, Yv, np.ones_like(Av)):.3f}")
